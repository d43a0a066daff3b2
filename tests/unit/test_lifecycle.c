/* Unit tests of the master-key lifecycle protocol (keystore/ks_lifecycle.c):
 * the history kept without limit and cleared only on request, the repair of
 * every half-finished step a crash can leave, the re-check of what a person
 * confirmed, the lock, the auto-update decision, one keystore per key file,
 * and a process that keeps a store open through hundreds of rotations made
 * by another process. */
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
#include <sys/file.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>


#include "keystore/ks_internal.h"
#include "keystore/ks_tamper.h"
#include "tests/unit/ks_test_util.h"

typedef struct {
    char dir[128], ks[160], keyfile[160], conf[160];
    ks_config cfg;
    ks_mk *m;
    uint32_t tid;
    uint64_t oids[16];
    size_t n;
} fx;


/* A key without scrypt: these tests rotate hundreds of times. */
static ks_mkey rand_key(void)
{
    ks_mkey k;
    memset(&k, 0, sizeof(k));
    assert_int_equal(RAND_bytes(k.key, KS_MK_LEN), 1);
    snprintf(k.source, sizeof(k.source), "test");
    return k;
}

static void kcv_of(const ks_mkey *k, uint8_t out[KS_KCV_LEN]) { ks_mkey_kcv(k, out); }


static void write_conf(fx *f)
{
    FILE *c = fopen(f->conf, "w");
    assert_non_null(c);
    fprintf(c, "keystore = %s\nmaster_key = %s\n", f->ks, f->keyfile);
    fclose(c);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    ks_err err = KS_ERR_INIT;
    ks_registers r;
    ks_store *st;

    snprintf(f->dir, sizeof(f->dir), "/tmp/p11mk-lc-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->ks, sizeof(f->ks), "%s/ks", f->dir);
    snprintf(f->keyfile, sizeof(f->keyfile), "%s/master.key", f->dir);
    snprintf(f->conf, sizeof(f->conf), "%s/p11mk.conf", f->dir);
    memset(&r, 0, sizeof(r));
    r.current = rand_key();
    assert_int_equal(ks_reg_save(f->keyfile, &r, &err), KS_OK);
    ks_mkey k = r.current;
    ks_reg_clear(&r);
    assert_int_equal(ks_open(f->ks, &k, KS_OPEN_CREATE, &st, &err), KS_OK);
    for (int i = 0; i < 8; i++) {
        put_arg a = {.tid = f->tid, .data = "object"};
        assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
        f->tid = a.tid;
        f->oids[f->n++] = a.oid;
    }
    ks_close(st);
    write_conf(f);
    assert_int_equal(ks_config_load_file(&f->cfg, f->conf, &err), KS_OK);
    assert_int_equal(ks_mk_open(&f->cfg, &f->m, &err), KS_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    ks_mk_close(f->m);
    ks_config_free(&f->cfg);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void all_read_obj(fx *f, ks_store *st)
{
    for (size_t i = 0; i < f->n; i++)
        assert_int_equal(read_obj(st, f->tid, f->oids[i]), KS_OK);
}

static void load(fx *f, ks_registers *r)
{
    ks_err err = KS_ERR_INIT;
    assert_int_equal(ks_reg_load(f->keyfile, 0600, r, &err), KS_OK);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *in = fopen(path, "rb");
    assert_non_null(in);
    char *buf = malloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, in);
    fclose(in);
    return buf;
}

/* ---- history ------------------------------------------------------------------ */

static void test_history_unbounded_and_cleared_on_request(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    uint8_t kcvs[41][KS_KCV_LEN];
    ks_registers r;

    load(f, &r);
    kcv_of(&r.current, kcvs[0]);
    ks_reg_clear(&r);
    /* 40 rotations: far past the old silent cap of 16. */
    for (int i = 1; i <= 40; i++) {
        ks_mkey k = rand_key();
        kcv_of(&k, kcvs[i]);
        assert_int_equal(ks_mk_rotate(f->m, &k, 0, NULL, &res, &err), KS_OK);
        assert_int_equal(res.epoch, (uint32_t)(1 + i));
        ks_mk_result_free(&res);
    }
    load(f, &r);
    assert_int_equal(r.n_old, 40);
    for (int i = 0; i < 40; i++) { /* newest first, with its epoch */
        assert_memory_equal(r.old[i].kcv, kcvs[39 - i], KS_KCV_LEN);
        assert_int_equal(r.old[i].epoch, (uint32_t)(40 - i));
        assert_false(r.old[i].aborted);
        assert_true(r.old[i].retired > 0);
    }
    ks_reg_clear(&r);
    all_read_obj(f, ks_mk_store(f->m));

    /* --keep 30 --before 5: of the 10 oldest (epochs 1..10), those below 5. */
    assert_int_equal(ks_mk_clear_history(f->m, 30, 5, NULL, &res, &err), KS_OK);
    assert_int_equal(res.n_destroyed, 4);
    for (size_t i = 0; i < res.n_destroyed; i++)
        assert_true(res.destroyed[i].epoch < 5);
    ks_mk_result_free(&res);
    load(f, &r);
    assert_int_equal(r.n_old, 36);
    assert_int_equal(r.old[35].epoch, 5);
    ks_reg_clear(&r);
    /* --keep 3 */
    assert_int_equal(ks_mk_clear_history(f->m, 3, 0, NULL, &res, &err), KS_OK);
    assert_int_equal(res.n_destroyed, 33);
    ks_mk_result_free(&res);
    load(f, &r);
    assert_int_equal(r.n_old, 3);
    assert_int_equal(r.old[0].epoch, 40);
    ks_reg_clear(&r);
    /* all */
    assert_int_equal(ks_mk_clear_history(f->m, 0, 0, NULL, &res, &err), KS_OK);
    assert_int_equal(res.n_destroyed, 3);
    ks_mk_result_free(&res);
    load(f, &r);
    assert_int_equal(r.n_old, 0);
    uint8_t k[KS_KCV_LEN];
    kcv_of(&r.current, k);
    assert_memory_equal(k, kcvs[40], KS_KCV_LEN); /* CURRENT is never touched */
    ks_reg_clear(&r);
    all_read_obj(f, ks_mk_store(f->m));
}

/* A fresh key staged as epoch 2 (the fixture is at epoch 1). */
static void stage_fresh(fx *f, ks_mkey *k, uint8_t kcv[KS_KCV_LEN])
{
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    *k = rand_key();
    kcv_of(k, kcv);
    assert_int_equal(ks_mk_stage(f->m, k, NULL, &res, &err), KS_OK);
    assert_int_equal(res.new_epoch, 2);
}

/* An aborted NEW sealed records while it was staged: a backup of that time
 * needs it, so it goes to the history, marked aborted. */
static void test_abort_keeps_the_key(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_mkey k;
    uint8_t kcv[KS_KCV_LEN];
    ks_registers r;

    stage_fresh(f, &k, kcv);
    assert_int_equal(ks_mk_stage(f->m, &k, NULL, &res, &err), KS_ESTATE);
    assert_int_equal(ks_mk_abort(f->m, NULL, &res, &err), KS_OK);
    load(f, &r);
    assert_false(r.has_new);
    assert_int_equal(r.n_old, 1);
    assert_memory_equal(r.old[0].kcv, kcv, KS_KCV_LEN);
    assert_true(r.old[0].aborted);
    assert_int_equal(r.old[0].epoch, 2);
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_abort(f->m, NULL, &res, &err), KS_ESTATE);
    assert_non_null(strstr(err.msg, "nothing to abort"));
    /* The same key may be staged again: it leaves the history for NEW. */
    assert_int_equal(ks_mk_stage(f->m, &k, NULL, &res, &err), KS_OK);
    load(f, &r);
    assert_true(r.has_new);
    assert_int_equal(r.n_old, 0);
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_rewrap(f->m, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_commit(f->m, NULL, &res, &err), KS_OK);
    all_read_obj(f, ks_mk_store(f->m));
}

static int stop_at_once(const ks_rot_progress *p, void *arg)
{
    (void)p;
    (void)arg;
    return 1;
}

/* A backup made while a rotation was stopped in its rewrap needs that
 * rotation's staged key; the rotation aborted, its key in the history as
 * aborted, and destroyed there by clear-history, restoring the backup is
 * refused, naming the key and what may have become of it, and nothing
 * changes (a hostile tester: the message called the scratch copy a
 * keystore, advised putting the staged key back and an abort, and did not
 * say that nothing was restored). */
static void test_restore_needs_a_cleared_staged_key(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_mkey k, k2;
    uint8_t kcv[KS_KCV_LEN];
    char bak[200], hex[2 * KS_KCV_LEN + 1];

    snprintf(bak, sizeof(bak), "%s/mid.bak", f->dir);
    stage_fresh(f, &k, kcv);
    ks_kcv_hex(kcv, hex);
    ks_mk_opts o = {.batch = 1, .progress = stop_at_once};
    assert_int_equal(ks_mk_rewrap(f->m, &o, &res, &err), KS_OK);
    assert_true(res.stopped);
    assert_int_equal(ks_mk_backup(f->m, bak, NULL, NULL, &err), KS_OK);
    assert_int_equal(ks_mk_abort(f->m, NULL, &res, &err), KS_OK);
    k2 = rand_key();
    assert_int_equal(ks_mk_stage(f->m, &k2, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_rewrap(f->m, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_commit(f->m, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_clear_history(f->m, 1, 0, NULL, &res, &err), KS_OK); /* the aborted key only */
    assert_int_equal(res.n_destroyed, 1);
    free(res.destroyed);
    ks_mk_close(f->m); /* restore refuses a keystore in use */
    f->m = NULL;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ks_mk_restore(&f->cfg, bak, NULL, &res, &err), KS_ENOKEY);
    assert_non_null(strstr(err.msg, "mid.bak cannot be restored here"));
    assert_non_null(strstr(err.msg, hex));
    assert_non_null(strstr(err.msg, "clear-history"));
    assert_non_null(strstr(err.msg, "nothing was restored"));
    assert_null(strstr(err.msg, "restore.tmp"));
    assert_int_equal(ks_mk_open(&f->cfg, &f->m, &err), KS_OK);
    all_read_obj(f, ks_mk_store(f->m));
    /* The backup's current key destroyed too: the copy is named, its key,
     * nothing done (it called the scratch copy a keystore, with advice for
     * the keystore in place). */
    assert_int_equal(ks_mk_clear_history(f->m, 0, 0, NULL, &res, &err), KS_OK);
    free(res.destroyed);
    ks_mk_close(f->m);
    f->m = NULL;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ks_mk_restore(&f->cfg, bak, NULL, &res, &err), KS_EWRONGKEY);
    assert_non_null(strstr(err.msg, "mid.bak cannot be opened with this host's keys: it is sealed under"));
    assert_non_null(strstr(err.msg, "nothing was restored"));
    assert_null(strstr(err.msg, "restore.tmp"));
    assert_int_equal(ks_mk_open(&f->cfg, &f->m, &err), KS_OK);
    all_read_obj(f, ks_mk_store(f->m));
}

/* A key file the admin made read-only (0400) keeps its mode through the
 * steps that replace it (a hostile tester: it came back 0600 after each). */
static void test_key_file_mode_kept(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_mkey k;
    uint8_t kcv[KS_KCV_LEN];
    struct stat sb;
    assert_int_equal(chmod(f->keyfile, 0400), 0);
    stage_fresh(f, &k, kcv);
    assert_int_equal(stat(f->keyfile, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0400);
    assert_int_equal(ks_mk_abort(f->m, NULL, &res, &err), KS_OK);
    assert_int_equal(stat(f->keyfile, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0400);
    assert_int_equal(chmod(f->keyfile, 0440), 0); /* more than key_file_mode allows: refused, not widened */
    assert_int_equal(ks_mk_stage(f->m, &k, NULL, &res, &err), KS_EPERM);
    assert_int_equal(stat(f->keyfile, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0440);
    assert_int_equal(chmod(f->keyfile, 0600), 0);
}

/* An abort killed after the keystore went back to CURRENT and before its
 * key file update: the keystore no longer knows the staged epoch, so the
 * repair labels the withdrawn key with the epoch after the current one
 * (the one it was staged as), never 0, which any 'clear-history --before'
 * destroyed although a backup taken while it was staged needs it. */
static void test_killed_abort_keeps_its_epoch(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_mkey k;
    uint8_t kcv[KS_KCV_LEN];
    ks_registers r;

    stage_fresh(f, &k, kcv);
    /* The keystore half of the abort, without the key file's. */
    assert_int_equal(ks_rot_abort(ks_mk_store(f->m), 0, NULL, NULL, NULL, &err), KS_OK);
    load(f, &r);
    assert_true(r.has_new);
    ks_reg_clear(&r);
    /* The next step repairs, then destroys only what is below epoch 2. */
    assert_int_equal(ks_mk_clear_history(f->m, 0, 2, NULL, &res, &err), KS_OK);
    assert_true(res.repaired & KS_MK_REPAIRED_RETIRED);
    assert_int_equal(res.n_destroyed, 0);
    free(res.destroyed);
    load(f, &r);
    assert_false(r.has_new);
    assert_int_equal(r.n_old, 1);
    assert_memory_equal(r.old[0].kcv, kcv, KS_KCV_LEN);
    assert_int_equal(r.old[0].epoch, 2);
    assert_true(r.old[0].aborted);
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_clear_history(f->m, 0, 3, NULL, &res, &err), KS_OK);
    assert_int_equal(res.n_destroyed, 1);
    free(res.destroyed);
}

/* A keystore on the built-in default key, with its configuration at conf. */
static ks_mk *default_keystore(const char *dir, const char *conf, ks_config *cfg)
{
    ks_err err = KS_ERR_INIT;
    ks_mkey dk;
    ks_store *st;
    char ks[256];

    snprintf(ks, sizeof(ks), "%s/ks", dir);
    ks_mkey_default(&dk);
    assert_int_equal(ks_open(ks, &dk, KS_OPEN_CREATE, &st, &err), KS_OK);
    ks_close(st);
    FILE *c = fopen(conf, "w");
    assert_non_null(c);
    fprintf(c, "keystore = %s\nmaster_key = default\n", ks);
    fclose(c);
    ks_mk *m;
    assert_int_equal(ks_config_load_file(cfg, conf, &err), KS_OK);
    assert_int_equal(ks_mk_open(cfg, &m, &err), KS_OK);
    return m;
}

/* A key file serves one keystore and names it. Two keystores on one file
 * lose keys (each step keeps only what its own keystore names; their locks
 * are their own): a second keystore adopting a file that names the first is
 * refused, and so is any step of a keystore whose configuration names
 * another keystore's file; two adoptions of one new file at the same moment
 * leave exactly one owner; a file that names no keystore (written before)
 * is bound to the keystore whose step reads it first. */
static void test_key_file_serves_one_keystore(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_registers r;
    ks_info ia;
    ks_mk_opts o;
    char bdir[256], bconf[300];
    ks_config bcfg;

    /* The fixture's key file names no keystore; the first step binds it. */
    load(f, &r);
    assert_false(r.has_owner);
    ks_reg_clear(&r);
    ks_mkey k = rand_key();
    assert_int_equal(ks_mk_rotate(f->m, &k, 0, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_get_info(ks_mk_store(f->m), &ia), KS_OK);
    load(f, &r);
    assert_true(r.has_owner);
    assert_memory_equal(r.owner, ia.keystore_id, sizeof(r.owner));
    ks_reg_clear(&r);

    /* Keystore B, on the default key, told to keep its keys in A's file. */
    snprintf(bdir, sizeof(bdir), "%s/b", f->dir);
    assert_int_equal(mkdir(bdir, 0700), 0);
    snprintf(bconf, sizeof(bconf), "%s/b.conf", bdir);
    ks_mk *mb = default_keystore(bdir, bconf, &bcfg);
    size_t before_len, after_len;
    char *before = slurp(f->keyfile, &before_len);
    memset(&o, 0, sizeof(o));
    o.key_file = f->keyfile;
    ks_mkey kb = rand_key();
    err = (ks_err)KS_ERR_INIT;
    assert_int_equal(ks_mk_rotate(mb, &kb, 0, &o, &res, &err), KS_EEXIST);
    assert_int_equal(err.area, KS_AREA_KEY);
    assert_non_null(strstr(err.msg, "not a new key file of this keystore"));
    char *after = slurp(f->keyfile, &after_len);
    assert_int_equal(before_len, after_len);
    assert_memory_equal(before, after, before_len); /* A's file untouched */
    free(before);
    free(after);
    /* What an adoption of B interrupted before its first stage left (B's id,
     * the default key alone) is taken back only in the place it was made
     * for: a copy of B elsewhere has B's id, and the original's
     * configuration may name that file already. */
    {
        ks_info ib;
        ks_registers lr;
        char lf[320], bks[300], real[PATH_MAX];
        uint8_t md[32];
        size_t mdl = 0;
        assert_int_equal(ks_get_info(ks_mk_store(mb), &ib), KS_OK);
        snprintf(lf, sizeof(lf), "%s/left.key", bdir);
        snprintf(bks, sizeof(bks), "%s/ks", bdir);
        assert_non_null(realpath(bks, real));
        assert_true(EVP_Q_digest(NULL, "SHA256", NULL, real, strlen(real), md, &mdl));
        memset(&lr, 0, sizeof(lr));
        ks_mkey_default(&lr.current);
        memcpy(lr.owner, ib.keystore_id, sizeof(lr.owner));
        lr.has_owner = true;
        memcpy(lr.made_for, md, sizeof(lr.made_for));
        lr.made_for[0] ^= 1; /* another place */
        lr.has_made_for = true;
        assert_int_equal(ks_reg_save(lf, &lr, &err), KS_OK);
        o.key_file = lf;
        assert_int_equal(ks_mk_rotate(mb, &kb, 0, &o, &res, &err), KS_EEXIST);
        lr.made_for[0] ^= 1; /* B's own place */
        assert_int_equal(ks_reg_save(lf, &lr, &err), KS_OK);
        ks_reg_clear(&lr);
        assert_int_equal(ks_mk_rotate(mb, &kb, 0, &o, &res, &err), KS_OK);
        assert_int_equal(ks_reg_load(lf, 0600, &lr, &err), KS_OK);
        assert_false(lr.has_made_for); /* adopted: the place is dropped */
        assert_true(lr.has_owner);
        ks_reg_clear(&lr);
    }
    ks_mk_close(mb);
    ks_config_free(&bcfg);

    /* B's configuration edited to name A's file: every step refused, A's file untouched. */
    FILE *c = fopen(bconf, "w");
    assert_non_null(c);
    fprintf(c, "keystore = %s/ks\nmaster_key = %s\n", bdir, f->keyfile);
    fclose(c);
    /* (B's current key put into A's file's history, as a shared file would have had it.) */
    load(f, &r);
    assert_int_equal(ks_reg_insert_old(&r, r.n_old, kb.key, 2, 0, false), KS_OK);
    assert_int_equal(ks_reg_save(f->keyfile, &r, &err), KS_OK);
    ks_reg_clear(&r);
    before = slurp(f->keyfile, &before_len);
    assert_int_equal(ks_config_load_file(&bcfg, bconf, &err), KS_OK);
    assert_int_equal(ks_mk_open(&bcfg, &mb, &err), KS_OK);
    uint64_t checked = 0, failed = 0; /* reported by verify, never acted on */
    assert_int_equal(ks_verify(ks_mk_store(mb), NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 1);
    err = (ks_err)KS_ERR_INIT;
    assert_int_equal(ks_mk_clear_history(mb, 0, 0, NULL, &res, &err), KS_EPERM);
    assert_non_null(strstr(err.msg, "belongs to another keystore"));
    ks_mkey k2 = rand_key();
    assert_int_equal(ks_mk_rotate(mb, &k2, 0, NULL, &res, &err), KS_EPERM);
    after = slurp(f->keyfile, &after_len);
    assert_int_equal(before_len, after_len);
    assert_memory_equal(before, after, before_len);
    free(before);
    free(after);
    ks_mk_close(mb);
    ks_config_free(&bcfg);
    /* A's steps go on. */
    assert_int_equal(ks_mk_clear_history(f->m, 0, 0, NULL, &res, &err), KS_OK);
    free(res.destroyed);
    /* No keystore is created on a key file that serves one. */
    {
        ks_mkey ka;
        ks_store *st = NULL;
        char cdir[300];
        snprintf(cdir, sizeof(cdir), "%s/c", f->dir);
        assert_int_equal(ks_mkey_load(&f->cfg, &ka, &err), KS_OK);
        err = (ks_err)KS_ERR_INIT;
        assert_int_equal(ks_open(cdir, &ka, KS_OPEN_CREATE, &st, &err), KS_EPERM);
        assert_non_null(strstr(err.msg, "already serves a keystore"));
        assert_null(st);
        ks_mkey_clear(&ka);
    }

    /* A copy restored in another keystore's place says so (succeeds): the
     * key file naming the keystore replaced follows it; naming any other,
     * it is refused. */
    {
        uint8_t other[16], replaced[16];
        assert_int_equal(RAND_bytes(other, sizeof(other)), 1);
        assert_int_equal(RAND_bytes(replaced, sizeof(replaced)), 1);
        load(f, &r);
        memcpy(r.owner, replaced, sizeof(r.owner));
        assert_int_equal(ks_reg_save(f->keyfile, &r, &err), KS_OK);
        ks_reg_clear(&r);
        ks_peek_ids live = {.have_ksid = true};
        memcpy(live.ksid, other, sizeof(other));
        assert_int_equal(ks_set_succeeds(ks_mk_store(f->m), &live), KS_OK);
        assert_int_equal(ks_mk_clear_history(f->m, 0, 0, NULL, &res, &err), KS_EPERM);
        /* A chain: the keystore replaced had itself replaced the one the file names. */
        live.n_succeeds = 1;
        memcpy(live.succeeds[0], replaced, sizeof(replaced));
        assert_int_equal(ks_set_succeeds(ks_mk_store(f->m), &live), KS_OK);
        /* ... followed only while the file holds, as CURRENT or NEW, the key
         * this keystore is sealed under (the list may name a keystore that
         * lives on elsewhere, whose file holds its own keys). */
        size_t kl;
        char *keep = slurp(f->keyfile, &kl);
        load(f, &r);
        assert_int_equal(ks_reg_insert_old(&r, 0, r.current.key, 0, 0, false), KS_OK);
        r.current = rand_key();
        assert_int_equal(ks_reg_save(f->keyfile, &r, &err), KS_OK);
        ks_reg_clear(&r);
        assert_int_equal(ks_mk_clear_history(f->m, 0, 0, NULL, &res, &err), KS_EPERM);
        FILE *kf = fopen(f->keyfile, "wb");
        assert_non_null(kf);
        assert_int_equal(fwrite(keep, 1, kl, kf), kl);
        fclose(kf);
        free(keep);
        uint64_t chk = 0, bad = 0;
        assert_int_equal(ks_verify(ks_mk_store(f->m), NULL, NULL, &chk, &bad), KS_OK);
        assert_int_equal(bad, 0); /* not reported: the file follows */
        assert_int_equal(ks_mk_clear_history(f->m, 0, 0, NULL, &res, &err), KS_OK);
        free(res.destroyed);
        load(f, &r);
        assert_memory_equal(r.owner, ia.keystore_id, sizeof(r.owner));
        ks_reg_clear(&r);
    }

    /* Two keystores on the default key adopt one new file at the same moment
     * (and what an adoption killed before left, FILE.new.PID of a process
     * now gone, is removed). */
    for (int round = 0; round < 12; round++) {
        char d[2][256], cf[2][300], shared[300], dead[340];
        snprintf(shared, sizeof(shared), "%s/shared-%d.key", f->dir, round);
        pid_t gone = fork();
        if (gone == 0)
            _exit(0);
        assert_int_equal(waitpid(gone, NULL, 0), gone);
        snprintf(dead, sizeof(dead), "%s.new.%ld", shared, (long)gone);
        FILE *df = fopen(dead, "w");
        assert_non_null(df);
        fclose(df);
        pid_t pid[2];
        for (int i = 0; i < 2; i++) {
            snprintf(d[i], sizeof(d[i]), "%s/r%d-%d", f->dir, round, i);
            assert_int_equal(mkdir(d[i], 0700), 0);
            snprintf(cf[i], sizeof(cf[i]), "%s/p11mk.conf", d[i]);
        }
        for (int i = 0; i < 2; i++) {
            if ((pid[i] = fork()) == 0) {
                ks_config cc;
                ks_mk *mm = default_keystore(d[i], cf[i], &cc);
                ks_mk_opts oo;
                ks_err e = KS_ERR_INIT;
                ks_mk_result rr;
                memset(&oo, 0, sizeof(oo));
                oo.key_file = shared;
                ks_mkey kk = rand_key();
                int rc = ks_mk_rotate(mm, &kk, 0, &oo, &rr, &e);
                ks_mk_close(mm);
                _exit(rc == KS_OK ? 0 : rc == KS_EEXIST ? 1 : 2);
            }
        }
        int ok = 0, refused = 0;
        for (int i = 0; i < 2; i++) {
            int st;
            assert_int_equal(waitpid(pid[i], &st, 0), pid[i]);
            assert_true(WIFEXITED(st));
            ok += WEXITSTATUS(st) == 0;
            refused += WEXITSTATUS(st) == 1;
        }
        assert_int_equal(ok, 1);
        assert_int_equal(refused, 1);
        assert_int_equal(access(dead, F_OK), -1);
    }
}

/* A process given only the current key (no key file to read the staged one
 * from) opens a keystore whose rotation resealed its index key under the
 * staged key: a key it lacks, said as such (KS_ENOKEY), never as damage
 * (it said "its metadata failed authentication or is damaged; restore it
 * from a backup"). In a child: this process holds the keystore open. */
static void test_open_without_staged_key(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_registers r;
    ks_mkey k = rand_key();

    load(f, &r);
    ks_mkey cur; /* the bytes alone: no key file named, none to read the staged key from */
    memset(&cur, 0, sizeof(cur));
    memcpy(cur.key, r.current.key, KS_MK_LEN);
    snprintf(cur.source, sizeof(cur.source), "test");
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_stage(f->m, &k, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_rewrap(f->m, NULL, &res, &err), KS_OK);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        ks_err e = KS_ERR_INIT;
        ks_store *st = NULL;
        int rc = ks_open(f->ks, &cur, 0, &st, &e);
        if (write(fds[1], e.msg, strlen(e.msg)) < 0)
            _exit(100);
        _exit(rc == KS_ENOKEY ? 0 : rc == KS_OK ? 101 : 102);
    }
    close(fds[1]);
    char msg[1024] = "";
    ssize_t n = read(fds[0], msg, sizeof(msg) - 1);
    close(fds[0]);
    msg[n > 0 ? n : 0] = '\0';
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    print_message("open without the staged key: %s\n", msg);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_null(strstr(msg, "damaged"));
    assert_null(strstr(msg, "backup"));
    assert_non_null(strstr(msg, "staged key"));
    assert_int_equal(ks_mk_commit(f->m, NULL, &res, &err), KS_OK);
}

/* ---- repair of what a crash leaves --------------------------------------------- */

/* The key file as a crash between a step's two writes leaves it. */
static void put_regs(fx *f, const ks_mkey *cur, const ks_mkey *nxt)
{
    ks_registers r;
    ks_err err = KS_ERR_INIT;
    memset(&r, 0, sizeof(r));
    r.current = *cur;
    if (nxt) {
        r.has_new = true;
        r.staged = *nxt;
    }
    assert_int_equal(ks_reg_save(f->keyfile, &r, &err), KS_OK);
    ks_reg_clear(&r);
}

static void test_repair_each_half_step(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_registers r;
    ks_mkey k1, k2 = rand_key(), k3 = rand_key();
    uint8_t c1[KS_KCV_LEN], c2[KS_KCV_LEN], c3[KS_KCV_LEN];

    load(f, &r);
    k1 = r.current;
    ks_reg_clear(&r);
    kcv_of(&k1, c1);
    kcv_of(&k2, c2);
    kcv_of(&k3, c3);

    /* 1. stage: the key file gained NEW, the keystore never staged it. */
    put_regs(f, &k1, &k2);
    assert_int_equal(ks_mk_commit(f->m, NULL, &res, &err), KS_ESTATE);
    assert_true(res.repaired & KS_MK_REPAIRED_RETIRED);
    load(f, &r);
    assert_false(r.has_new);
    assert_int_equal(r.n_old, 1); /* moved, not dropped */
    assert_memory_equal(r.old[0].kcv, c2, KS_KCV_LEN);
    assert_true(r.old[0].aborted);
    ks_reg_clear(&r);

    /* 2. commit: the keystore committed, the key file still says NEW. */
    assert_int_equal(ks_mk_stage(f->m, &k3, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_rewrap(f->m, NULL, &res, &err), KS_OK);
    ks_registers before;
    load(f, &before);
    assert_int_equal(ks_mk_commit(f->m, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_reg_save(f->keyfile, &before, &err), KS_OK); /* as if the key file update was lost */
    ks_reg_clear(&before);
    /* A fresh process opens the keystore with the lagging key file. */
    ks_config cfg;
    ks_mk *m2;
    assert_int_equal(ks_config_load_file(&cfg, f->conf, &err), KS_OK);
    ks_mk_close(f->m);
    f->m = NULL;
    assert_int_equal(ks_mk_open(&cfg, &m2, &err), KS_OK);
    all_read_obj(f, ks_mk_store(m2));
    ks_mk_view v;
    assert_int_equal(ks_mk_view_get(m2, &v, &err), KS_OK); /* the view shows it repaired, writes nothing */
    assert_memory_equal(v.kcv, c3, KS_KCV_LEN);
    assert_false(v.has_new);
    assert_int_equal(v.n_history, 2);
    ks_mk_view_free(&v);
    load(f, &r);
    assert_true(r.has_new);
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_commit(m2, NULL, &res, &err), KS_OK); /* the commit finishes: repair */
    assert_true(res.repaired & KS_MK_REPAIRED_PROMOTED);
    load(f, &r);
    uint8_t k[KS_KCV_LEN];
    kcv_of(&r.current, k);
    assert_memory_equal(k, c3, KS_KCV_LEN);
    assert_false(r.has_new);
    assert_int_equal(r.n_old, 2);
    assert_memory_equal(r.old[0].kcv, c1, KS_KCV_LEN);
    assert_false(r.old[0].aborted);
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_commit(m2, NULL, &res, &err), KS_ESTATE); /* and then there is nothing to commit */

    /* 3. a key file put back from an old copy: CURRENT is a retired key. */
    ks_mkey k4 = rand_key();
    assert_int_equal(ks_mk_rotate(m2, &k4, 0, NULL, &res, &err), KS_OK);
    ks_registers now;
    load(f, &now);
    put_regs(f, &k3, NULL); /* the old CURRENT, and k4 nowhere */
    assert_int_equal(ks_mk_clear_history(m2, 0, 0, NULL, &res, &err), KS_ENOKEY);
    assert_non_null(strstr(err.msg, "does not hold the keystore's current master key"));
    assert_int_equal(ks_reg_save(f->keyfile, &now, &err), KS_OK);
    ks_reg_clear(&now);
    /* k4 current but listed in the history, k3 as CURRENT: reordered. */
    memset(&r, 0, sizeof(r));
    r.current = k3;
    assert_int_equal(ks_reg_insert_old(&r, 0, k4.key, 3, 1, false), KS_OK); /* its true epoch */
    assert_int_equal(ks_reg_save(f->keyfile, &r, &err), KS_OK);
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_set_auto(m2, 0, NULL, &res, &err), KS_OK);
    assert_true(res.repaired & KS_MK_REPAIRED_REORDERED);
    load(f, &r);
    assert_memory_equal(r.current.key, k4.key, KS_MK_LEN);
    assert_int_equal(r.n_old, 1);
    assert_memory_equal(r.old[0].key, k3.key, KS_MK_LEN);
    ks_reg_clear(&r);
    all_read_obj(f, ks_mk_store(m2));
    ks_mk_close(m2);
    ks_config_free(&cfg);
    assert_int_equal(ks_config_load_file(&cfg, f->conf, &err), KS_OK);
    assert_int_equal(ks_mk_open(&cfg, &f->m, &err), KS_OK);
    ks_config_free(&cfg);
}

/* ---- what a person confirmed ------------------------------------------------------ */

static void test_expectation_refuses_and_writes_nothing(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_mk_view seen;
    ks_mkey a = rand_key(), b = rand_key();
    assert_int_equal(ks_mk_rotate(f->m, &a, 0, NULL, &res, &err), KS_OK);
    /* The person is shown the state ... */
    assert_int_equal(ks_mk_view_get(f->m, &seen, &err), KS_OK);
    assert_int_equal(seen.n_history, 1);
    /* ... meanwhile another command rotates ... */
    assert_int_equal(ks_mk_rotate(f->m, &b, 0, NULL, &res, &err), KS_OK);
    size_t l1, l2;
    char *before = slurp(f->keyfile, &l1);
    /* ... and the answer 'y' arrives. */
    ks_mk_opts o = {.expect = &seen};
    err.msg[0] = 0;
    assert_int_equal(ks_mk_clear_history(f->m, 0, 0, &o, &res, &err), KS_ECHANGED);
    assert_non_null(strstr(err.msg, "changed while you were asked"));
    assert_non_null(strstr(err.msg, "epoch 2 -> 3"));
    ks_mkey c = rand_key();
    assert_int_equal(ks_mk_rotate(f->m, &c, KS_MK_MANUAL, &o, &res, &err), KS_ECHANGED);
    char *after = slurp(f->keyfile, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(before, after, l1);
    free(before);
    free(after);
    ks_info info;
    assert_int_equal(ks_get_info(ks_mk_store(f->m), &info), KS_OK);
    assert_int_equal(info.epoch, 3);
    ks_mk_view_free(&seen);
    /* A fresh view is accepted. */
    assert_int_equal(ks_mk_view_get(f->m, &seen, &err), KS_OK);
    assert_int_equal(ks_mk_clear_history(f->m, 0, 0, &o, &res, &err), KS_OK);
    assert_int_equal(res.n_destroyed, 2);
    ks_mk_result_free(&res);
    ks_mk_view_free(&seen);
    /* A history change alone is noticed too. */
    assert_int_equal(ks_mk_view_get(f->m, &seen, &err), KS_OK);
    ks_mkey d = rand_key();
    assert_int_equal(ks_mk_stage(f->m, &d, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_abort(f->m, NULL, &res, &err), KS_OK); /* epoch and state as before, history +1 */
    assert_int_equal(ks_mk_clear_history(f->m, 0, 0, &o, &res, &err), KS_ECHANGED);
    assert_non_null(strstr(err.msg, "history"));
    ks_mk_view_free(&seen);
}

/* ---- the lock ---------------------------------------------------------------------- */

static void test_lock_excludes_and_waits(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    char lp[200];
    int pipefd[2];
    snprintf(lp, sizeof(lp), "%s/rotation.lock", f->ks);
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(lp, O_RDWR | O_CREAT, 0600);
        if (fd < 0 || flock(fd, LOCK_EX) != 0 || write(fd, "pid 1, test, since now\n", 23) != 23)
            _exit(1);
        if (write(pipefd[1], "x", 1) != 1)
            _exit(1);
        usleep(600000);
        _exit(0);
    }
    /* The parent's write end closed: a child that fails before it holds the
     * lock ends the read (0) instead of leaving it waiting. */
    close(pipefd[1]);
    char c;
    assert_int_equal(read(pipefd[0], &c, 1), 1);
    ks_mk_opts now = {.wait_ms = 0};
    assert_int_equal(ks_mk_set_auto(f->m, 0, &now, &res, &err), KS_EBUSY);
    assert_non_null(strstr(err.msg, "pid 1, test"));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ks_mk_opts later = {.wait_ms = 5000};
    assert_int_equal(ks_mk_set_auto(f->m, 0, &later, &res, &err), KS_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 >= 300);
    /* The child held the lock and let it go by exiting normally. */
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(pipefd[0]);
    /* A symbolic link planted as the lock file is refused, not followed. */
    char victim[200];
    snprintf(victim, sizeof(victim), "%s/victim", f->dir);
    FILE *v = fopen(victim, "w");
    fputs("do not truncate", v);
    fclose(v);
    unlink(lp);
    assert_int_equal(symlink(victim, lp), 0);
    assert_int_not_equal(ks_mk_set_auto(f->m, 0, &now, &res, &err), KS_OK);
    assert_non_null(strstr(err.msg, "symbolic link"));
    struct stat sb;
    assert_int_equal(stat(victim, &sb), 0);
    assert_int_equal(sb.st_size, 15);
    unlink(lp);
}

/* An application inside a write holds the keystore's writer gate: a step
 * waits for it (told after a second who holds it) as long as its wait
 * allows, and no longer. A hostile tester's application, stopped inside a
 * write, held every step up without a word, whatever --wait said. */
typedef struct {
    int ready;  /* a pipe's write end: told once the write is under way */
    bool stop;  /* stop (SIGSTOP) inside the write, else sleep 1.5 s */
} hold_arg;

static int hold_fn(ks_txn *t, void *arg)
{
    hold_arg *h = arg;
    put_arg a = {.tid = 0, .data = "held"};
    int rc = put_fn(t, &a);
    if (rc == KS_OK && write(h->ready, "x", 1) == 1) {
        if (h->stop)
            raise(SIGSTOP);
        else
            usleep(1500000);
    }
    return rc;
}

static pid_t holder_start(fx *f, bool stop)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ks_err e = KS_ERR_INIT;
        ks_mkey mk;
        ks_store *st;
        close(p[0]);
        hold_arg h = {p[1], stop};
        if (ks_mkey_load(&f->cfg, &mk, &e) != KS_OK || ks_open(f->ks, &mk, 0, &st, &e) != KS_OK)
            _exit(2);
        int rc = ks_write(st, hold_fn, &h);
        ks_close(st);
        _exit(rc == KS_OK ? 0 : 1);
    }
    close(p[1]);
    char c;
    assert_int_equal(read(p[0], &c, 1), 1); /* 0: the child failed before its write */
    close(p[0]);
    if (stop) {
        int status;
        assert_int_equal(waitpid(pid, &status, WUNTRACED), pid);
        assert_true(WIFSTOPPED(status));
    }
    return pid;
}

static void told_what(const char *what, void *arg)
{
    snprintf(arg, 512, "%s", what);
}

static long ms_between(const struct timespec *a, const struct timespec *b)
{
    return (b->tv_sec - a->tv_sec) * 1000 + (b->tv_nsec - a->tv_nsec) / 1000000;
}

static void test_writer_gate_bounds_a_step(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    char what[512] = "", pidstr[32];
    struct timespec t0, t1;
    int status;
    ks_mk_opts o = {.wait_ms = 2500, .waiting = told_what, .arg = what};

    /* A write that ends within the bound: the step waits for it, and says so after a second. */
    pid_t pid = holder_start(f, false);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(ks_mk_set_auto(f->m, 3600, &o, &res, &err), KS_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(ms_between(&t0, &t1) >= 1000);
    snprintf(pidstr, sizeof(pidstr), "pid %ld (", (long)pid);
    assert_non_null(strstr(what, "a write to the keystore by"));
    assert_non_null(strstr(what, pidstr));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* A writer stopped inside its write: the step gives up at its bound, named, nothing written. */
    what[0] = '\0';
    pid = holder_start(f, true);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(ks_mk_set_auto(f->m, 7200, &o, &res, &err), KS_EBUSY);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "gave up after %ld ms: %s\n  told: %s\n", ms_between(&t0, &t1), err.msg, what);
    assert_true(ms_between(&t0, &t1) >= 2500 && ms_between(&t0, &t1) < 20000);
    snprintf(pidstr, sizeof(pidstr), "pid %ld (", (long)pid);
    assert_non_null(strstr(what, pidstr));
    ks_info info;
    ks_store *st = NULL;
    ks_mkey mk;
    assert_int_equal(ks_mkey_load(&f->cfg, &mk, &err), KS_OK);
    assert_int_equal(ks_open(f->ks, &mk, KS_OPEN_RDONLY, &st, &err), KS_OK); /* a reader needs no gate */
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.auto_interval, 3600);
    ks_close(st);

    /* Let go: the application's write commits, and the step then goes through. */
    assert_int_equal(kill(pid, SIGCONT), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(ks_mk_set_auto(f->m, 7200, &o, &res, &err), KS_OK);
    assert_int_equal(ks_open(f->ks, &mk, KS_OPEN_RDONLY, &st, &err), KS_OK);
    assert_int_equal(ks_get_info(st, &info), KS_OK);
    assert_int_equal(info.auto_interval, 7200);
    ks_close(st);
    ks_mkey_clear(&mk);
}

/* ---- automatic rotation ---------------------------------------------------------------- */

static void test_auto_update_decision(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    assert_int_equal(ks_auto_due(UINT64_MAX - 5, 3600), UINT64_MAX);
    assert_int_equal(ks_auto_due(100, 3600), 3700);
    assert_int_equal(ks_mk_set_auto(f->m, KS_AUTO_MIN - 1, NULL, &res, &err), KS_EINVAL);
    assert_int_equal(ks_mk_set_auto(f->m, KS_AUTO_MAX + 1, NULL, &res, &err), KS_EINVAL);
    assert_int_equal(ks_mk_set_auto(f->m, UINT64_MAX, NULL, &res, &err), KS_EINVAL);
    assert_int_equal(ks_mk_set_auto(f->m, KS_AUTO_MAX, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_set_auto(f->m, 3600, NULL, &res, &err), KS_OK);
    uint64_t due = res.next_due;
    assert_true(due > (uint64_t)time(NULL));
    assert_int_equal(ks_mk_auto_run(f->m, due - 1, NULL, &res, &err), KS_OK);
    assert_false(res.rotated);
    assert_int_equal(res.epoch, 1);
    /* Two timers at the moment it is due: one rotation. */
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) {
            ks_config cfg;
            ks_mk *m;
            ks_err e = KS_ERR_INIT;
            ks_mk_result r;
            ks_mk_opts o = {.wait_ms = 20000};
            if (ks_config_load_file(&cfg, f->conf, &e) != KS_OK || ks_mk_open(&cfg, &m, &e) != KS_OK)
                _exit(2);
            int rc = ks_mk_auto_run(m, due, &o, &r, &e);
            _exit(rc != KS_OK ? 1 : r.rotated ? 10 : 0);
        }
    }
    int rotated = 0;
    for (int i = 0; i < 2; i++) {
        int st;
        assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
        assert_true(WIFEXITED(st));
        assert_true(WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 10);
        rotated += WEXITSTATUS(st) == 10;
    }
    assert_int_equal(rotated, 1);
    ks_info info;
    assert_int_equal(ks_get_info(ks_mk_store(f->m), &info), KS_OK);
    assert_int_equal(info.epoch, 2);
    /* A key set by hand turns it off in the same commit. */
    ks_mkey k = rand_key();
    assert_int_equal(ks_mk_rotate(f->m, &k, KS_MK_MANUAL, NULL, &res, &err), KS_OK);
    assert_true(res.auto_disabled);
    assert_int_equal(ks_get_info(ks_mk_store(f->m), &info), KS_OK);
    assert_int_equal(info.auto_interval, 0);
    all_read_obj(f, ks_mk_store(f->m));
}

/* An interrupted rotation is finished by the timer's step. */
static void test_auto_run_finishes_interrupted(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_mkey k = rand_key();
    assert_int_equal(ks_mk_stage(f->m, &k, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_auto_run(f->m, (uint64_t)time(NULL), NULL, &res, &err), KS_OK);
    assert_true(res.finished);
    assert_false(res.rotated);
    assert_int_equal(res.epoch, 2);
    k = rand_key();
    assert_int_equal(ks_mk_stage(f->m, &k, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_rot_abort(ks_mk_store(f->m), 1, NULL, NULL, NULL, &err), KS_OK); /* the keystore half */
    assert_int_equal(ks_mk_auto_run(f->m, (uint64_t)time(NULL), NULL, &res, &err), KS_OK);
    assert_true(res.repaired & KS_MK_REPAIRED_RETIRED);
    ks_registers r;
    load(f, &r);
    assert_false(r.has_new);
    ks_reg_clear(&r);
    all_read_obj(f, ks_mk_store(f->m));
}

/* ---- a process that stays loaded --------------------------------------------------------- */

/* The parent keeps one store open (as a TLS server keeps the module loaded)
 * while a child rotates 250 times through the lifecycle; after every
 * rotation the parent reads, writes and reads back, and holds no more than
 * two master keys of its own. */
static void test_long_lived_process_follows_250_rotations(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_store *st;
    ks_mkey first;
    int to_child[2], to_parent[2];
    const int rounds = 250;

    ks_registers r;
    load(f, &r);
    first = r.current;
    snprintf(first.source, sizeof(first.source), "%s", f->keyfile);
    first.file_mode = 0600;
    ks_reg_clear(&r);
    ks_mk_close(f->m); /* the child does the rotations; the parent is only an application */
    f->m = NULL;
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(to_parent), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ks_mk *m;
        ks_mk_result res;
        ks_err e = KS_ERR_INIT;
        char c;
        close(to_child[1]);
        close(to_parent[0]);
        if (ks_mk_open(&f->cfg, &m, &e) != KS_OK)
            _exit(2);
        while (read(to_child[0], &c, 1) == 1 && c == 'r') {
            ks_mkey k = rand_key();
            int rc = ks_mk_rotate(m, &k, 0, NULL, &res, &e);
            c = rc == KS_OK ? 'k' : 'f';
            if (write(to_parent[1], &c, 1) != 1)
                _exit(3);
        }
        ks_mk_close(m);
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    assert_int_equal(ks_open(f->ks, &first, 0, &st, &err), KS_OK);
    for (int i = 1; i <= rounds; i++) {
        char c = 'r';
        assert_int_equal(write(to_child[1], &c, 1), 1);
        assert_int_equal(read(to_parent[0], &c, 1), 1);
        assert_int_equal(c, 'k');
        all_read_obj(f, st);
        put_arg a = {.tid = f->tid, .data = "written after a rotation"};
        assert_int_equal(ks_write(st, put_fn, &a), KS_OK);
        assert_int_equal(read_obj(st, f->tid, a.oid), KS_OK);
        assert_int_equal(ks_epoch(st), (uint32_t)(1 + i));
        pthread_mutex_lock(&st->ring_lock);
        size_t held = st->nextra;
        pthread_mutex_unlock(&st->ring_lock);
        assert_true(held <= 2);
    }
    close(to_child[1]);
    close(to_parent[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    uint64_t checked, failed;
    assert_int_equal(ks_verify(st, NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0);
    ks_close(st);
    ks_mkey_clear(&first);
    load(f, &r);
    assert_int_equal(r.n_old, (size_t)rounds);
    ks_reg_clear(&r);
    assert_int_equal(ks_mk_open(&f->cfg, &f->m, &err), KS_OK);
}


/* data.mdb put back from an older copy while the key file moved on: a
 * rollback, reported by open, verify and every step; nothing is "repaired"
 * into the old state. */
static void test_rollback_of_the_keystore_alone(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    char data[200], saved[200], cmd[1024];
    snprintf(data, sizeof(data), "%s/data.mdb", f->ks);
    snprintf(saved, sizeof(saved), "%s/old.mdb", f->dir);
    ks_mk_close(f->m);
    f->m = NULL;
    snprintf(cmd, sizeof(cmd), "cp %s %s", data, saved);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(ks_mk_open(&f->cfg, &f->m, &err), KS_OK);
    for (int i = 0; i < 2; i++) {
        ks_mkey k = rand_key();
        assert_int_equal(ks_mk_rotate(f->m, &k, 0, NULL, &res, &err), KS_OK);
    }
    ks_mk_close(f->m);
    f->m = NULL;
    snprintf(cmd, sizeof(cmd), "cp %s %s && rm -f %s/lock.mdb", saved, data, f->ks);
    assert_int_equal(system(cmd), 0);
    size_t l1, l2;
    char *before = slurp(f->keyfile, &l1);
    assert_int_equal(ks_mk_open(&f->cfg, &f->m, &err), KS_OK); /* opens: the old key is in the history */
    uint64_t checked, failed;
    assert_int_equal(ks_verify(ks_mk_store(f->m), NULL, NULL, &checked, &failed), KS_OK);
    assert_true(failed >= 1);
    err.msg[0] = 0;
    assert_int_equal(ks_mk_clear_history(f->m, 0, 0, NULL, &res, &err), KS_ECORRUPT);
    assert_non_null(strstr(err.msg, "older than its key file"));
    ks_mkey k = rand_key();
    assert_int_equal(ks_mk_rotate(f->m, &k, 0, NULL, &res, &err), KS_ECORRUPT);
    char *after = slurp(f->keyfile, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(before, after, l1); /* the key file is untouched */
    free(before);
    free(after);
}


/* The plain check value of the staged epoch pointed at a retired key (or the
 * default key): the staged key is still the one the authenticated state
 * names; the rotation ends under it, and verify reports the edit. */
static void test_staged_kcv_cannot_be_redirected(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_mk_result res;
    ks_mkey k2 = rand_key(), k3 = rand_key();
    uint8_t c1[KS_KCV_LEN], c3[KS_KCV_LEN];
    ks_registers r;
    load(f, &r);
    kcv_of(&r.current, c1); /* will be retired: the attacker's pick */
    ks_reg_clear(&r);
    kcv_of(&k3, c3);
    assert_int_equal(ks_mk_rotate(f->m, &k2, 0, NULL, &res, &err), KS_OK); /* k1 retired */
    assert_int_equal(ks_mk_stage(f->m, &k3, NULL, &res, &err), KS_OK);   /* epoch 3 staged */
    uint32_t staged = res.new_epoch;
    ks_mk_close(f->m);
    f->m = NULL;
    /* Rewrite the plain kcv<3> to k1's check value. */
    ks_tamper *raw;
    uint8_t key[7] = {'k', 'c', 'v'};
    ks_be32(key + 3, staged);
    assert_int_equal(ks_tamper_open(f->ks, 0, &raw), KS_OK);
    assert_int_equal(ks_tamper_put(raw, KS_TAMPER_META, key, 7, c1, KS_KCV_LEN), KS_OK);
    assert_int_equal(ks_tamper_commit(raw), KS_OK);
    assert_int_equal(ks_mk_open(&f->cfg, &f->m, &err), KS_OK);
    uint64_t checked, failed;
    assert_int_equal(ks_verify(ks_mk_store(f->m), NULL, NULL, &checked, &failed), KS_OK);
    assert_true(failed >= 1);
    assert_int_equal(ks_mk_rewrap(f->m, NULL, &res, &err), KS_OK);
    assert_int_equal(ks_mk_commit(f->m, NULL, &res, &err), KS_OK);
    assert_memory_equal(res.kcv, c3, KS_KCV_LEN); /* the key the admin staged, not the retired one */
    load(f, &r);
    uint8_t cur[KS_KCV_LEN];
    kcv_of(&r.current, cur);
    assert_memory_equal(cur, c3, KS_KCV_LEN);
    assert_int_equal(ks_reg_find(&r, c1, NULL) >= KS_REG_OLD, true); /* k1 stays retired */
    ks_reg_clear(&r);
    all_read_obj(f, ks_mk_store(f->m));
    assert_int_equal(ks_verify(ks_mk_store(f->m), NULL, NULL, &checked, &failed), KS_OK);
    assert_int_equal(failed, 0); /* the commit wrote the plain check value from the authenticated one */
}

/* ---- the registers file format --------------------------------------------------------------- */

static void test_registers_v2_and_damage(void **state)
{
    fx *f = *state;
    ks_err err = KS_ERR_INIT;
    ks_registers r;
    char path[200];
    snprintf(path, sizeof(path), "%s/regs", f->dir);
    memset(&r, 0, sizeof(r));
    r.current = rand_key();
    for (int i = 0; i < 100; i++) {
        ks_mkey k = rand_key();
        assert_int_equal(ks_reg_insert_old(&r, r.n_old, k.key, (uint32_t)(200 - i), 1700000000u + (uint64_t)i,
                                           i % 7 == 3), KS_OK);
    }
    assert_int_equal(ks_reg_save(path, &r, &err), KS_OK);
    ks_registers back;
    assert_int_equal(ks_reg_load(path, 0600, &back, &err), KS_OK);
    assert_int_equal(back.n_old, 100);
    for (int i = 0; i < 100; i++) {
        assert_memory_equal(back.old[i].key, r.old[i].key, KS_MK_LEN);
        assert_memory_equal(back.old[i].kcv, r.old[i].kcv, KS_KCV_LEN);
        assert_int_equal(back.old[i].epoch, r.old[i].epoch);
        assert_int_equal(back.old[i].retired, r.old[i].retired);
        assert_int_equal(back.old[i].aborted, r.old[i].aborted);
    }
    ks_reg_clear(&back);
    /* A version 1 file (old lines without fields) still reads. */
    {
        char v1[200];
        snprintf(v1, sizeof(v1), "%s/v1", f->dir);
        /* written by hand: magic v1, current, old, check over the lines */
        static const char body[] = "p11mk-registers 1\n"
                                   "current 0101010101010101010101010101010101010101010101010101010101010101\n"
                                   "old 0202020202020202020202020202020202020202020202020202020202020202\n";
        uint8_t sum[32];
        size_t sl = 0;
        assert_true(EVP_Q_digest(NULL, "SHA256", NULL, body, sizeof(body) - 1, sum, &sl));
        FILE *o = fopen(v1, "w");
        fputs(body, o);
        fprintf(o, "check ");
        for (int i = 0; i < 8; i++)
            fprintf(o, "%02x", sum[i]);
        fputc('\n', o);
        fclose(o);
        chmod(v1, 0600);
        assert_int_equal(ks_reg_load(v1, 0600, &back, &err), KS_OK);
        assert_int_equal(back.n_old, 1);
        assert_int_equal(back.old[0].epoch, 0);
        assert_int_equal(back.old[0].key[0], 2);
        ks_reg_clear(&back);
    }
    /* Every single-byte change of the file is refused (or is a comment). */
    size_t len;
    char *orig = slurp(path, &len);
    int refused = 0, tried = 0;
    for (size_t off = 60; off < len; off += 97) {
        char *mod = malloc(len);
        memcpy(mod, orig, len);
        mod[off] ^= 0x01;
        FILE *o = fopen(path, "wb");
        fwrite(mod, 1, len, o);
        fclose(o);
        tried++;
        int rc = ks_reg_load(path, 0600, &back, &err);
        if (rc != KS_OK)
            refused++;
        else
            ks_reg_clear(&back);
        free(mod);
    }
    assert_int_equal(refused, tried);
    /* A FIFO where the key file belongs: refused at once, not a hang. */
    unlink(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(ks_reg_load(path, 0600, &back, &err), KS_EINVAL);
    assert_non_null(strstr(err.msg, "not a regular file"));
    unlink(path);
    free(orig);
    ks_reg_clear(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_history_unbounded_and_cleared_on_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_keeps_the_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_needs_a_cleared_staged_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_abort_keeps_its_epoch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_file_serves_one_keystore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_without_staged_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repair_each_half_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expectation_refuses_and_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_excludes_and_waits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_gate_bounds_a_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_file_mode_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_update_decision, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_run_finishes_interrupted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_lived_process_follows_250_rotations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollback_of_the_keystore_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_staged_kcv_cannot_be_redirected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registers_v2_and_damage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
