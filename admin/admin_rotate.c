/* p11mk-admin: the master-key lifecycle: set-master-key, stage, rewrap,
 * commit, abort, rotate, clear-history, verify.
 *
 * The key file (configuration "master_key") holds the registers; the
 * keystore holds the epochs, the rotation state and the records. Order of
 * writes, so that a crash anywhere leaves something the next run finishes:
 *   stage:  key file gains NEW          -> keystore stages epoch N+1
 *   commit: keystore makes N+1 current  -> key file moves NEW to CURRENT
 *   abort:  keystore withdraws N+1      -> key file drops NEW
 * The keystore finds keys by check value, so registers that lag one step
 * behind still open it, and the next command repairs them. */
#include "admin/admin.h"
#include "keystore/ks.h"
#include "token/tok_token.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

typedef struct {
    ks_config cfg;
    ks_mkey mk;
    ks_store *st;
    bool have_regs;
    ks_registers regs;
} rot_ctx;

static void rot_close(rot_ctx *c)
{
    if (c->st)
        ks_close(c->st);
    c->st = NULL;
    ks_mkey_clear(&c->mk);
    ks_reg_clear(&c->regs);
    ks_config_free(&c->cfg);
}

static int open_exit(int rc)
{
    switch (rc) {
    case KS_EWRONGKEY:
    case KS_ENOKEY:
    case KS_EPERM: return EXIT_KEY;
    case KS_ECONFIG: return EXIT_CONFIG;
    default: return EXIT_KEYSTORE;
    }
}

static bool is_default_source(const ks_config *cfg)
{
    return !cfg->master_key || strcmp(cfg->master_key, "default") == 0;
}

/* Replace (or add) "master_key = path" in a configuration file, atomically. */
static int config_set_key(const char *conf, const char *keyfile)
{
    char tmp[PATH_MAX + 16], line[4096];
    FILE *in = fopen(conf, "re"), *out;
    bool done = false;
    int fd;

    snprintf(tmp, sizeof(tmp), "%s.tmp", conf);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || !(out = fdopen(fd, "w"))) {
        if (in)
            fclose(in);
        return -1;
    }
    while (in && fgets(line, sizeof(line), in)) {
        const char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (strncmp(p, "master_key", 10) == 0 && (isspace((unsigned char)p[10]) || p[10] == '=')) {
            if (!done)
                fprintf(out, "master_key = %s\n", keyfile);
            done = true;
            continue;
        }
        fputs(line, out);
    }
    if (!done)
        fprintf(out, "master_key = %s\n", keyfile);
    if (in)
        fclose(in);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0) {
        fclose(out);
        unlink(tmp);
        return -1;
    }
    fclose(out);
    return rename(tmp, conf);
}

/* A keystore on the built-in default key gets a key file before its first
 * rotation: the registers need a home. */
static int adopt_key_file(rot_ctx *c, const admin_opts *o)
{
    char keyfile[PATH_MAX], conf[PATH_MAX];
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    ks_registers r;
    ks_err err = {{0}};

    if (o->key_file) {
        snprintf(keyfile, sizeof(keyfile), "%s", o->key_file);
    } else if (c->cfg.source) {
        const char *slash = strrchr(c->cfg.source, '/');
        snprintf(keyfile, sizeof(keyfile), "%.*s/master.key", slash ? (int)(slash - c->cfg.source) : 1,
                 slash ? c->cfg.source : ".");
    } else if (xdg && *xdg) {
        snprintf(keyfile, sizeof(keyfile), "%s/p11mk/master.key", xdg);
    } else {
        snprintf(keyfile, sizeof(keyfile), "%s/.config/p11mk/master.key", home && *home ? home : "/root");
    }
    if (access(keyfile, F_OK) == 0) {
        admin_error("%s already exists; name another file with --key-file, or set \"master_key = %s\" in the "
                    "configuration if it holds this keystore's keys", keyfile, keyfile);
        return EXIT_KEY;
    }
    if (c->cfg.source) {
        snprintf(conf, sizeof(conf), "%s", c->cfg.source);
    } else if (xdg && *xdg) {
        snprintf(conf, sizeof(conf), "%s/p11mk/p11mk.conf", xdg);
    } else {
        snprintf(conf, sizeof(conf), "%s/.config/p11mk/p11mk.conf", home && *home ? home : "/root");
    }
    memset(&r, 0, sizeof(r));
    ks_mkey_default(&r.current); /* public: storing it costs nothing */
    if (admin_mkdir_parents(keyfile) != 0 || ks_reg_save(keyfile, &r, &err) != KS_OK) {
        admin_error("cannot create key file %s: %s", keyfile, err.msg[0] ? err.msg : strerror(errno));
        return EXIT_KEY;
    }
    if (!c->cfg.source) { /* no configuration yet: write one naming the keystore too */
        FILE *f;
        int fd;
        if (admin_mkdir_parents(conf) != 0 || (fd = open(conf, O_WRONLY | O_CREAT | O_EXCL, 0600)) < 0 ||
            !(f = fdopen(fd, "w"))) {
            admin_error("cannot create configuration %s: %s", conf, strerror(errno));
            unlink(keyfile);
            return EXIT_CONFIG;
        }
        fprintf(f, "# written by p11mk-admin\nkeystore = %s\nmaster_key = %s\n", c->cfg.keystore, keyfile);
        fclose(f);
    } else if (config_set_key(conf, keyfile) != 0) {
        admin_error("cannot update configuration %s: %s", conf, strerror(errno));
        unlink(keyfile);
        return EXIT_CONFIG;
    }
    printf("The master keys are now kept in %s (configuration %s names it).\n", keyfile, conf);
    return EXIT_OK;
}

static int rot_open(rot_ctx *c, const admin_opts *o, bool need_keyfile)
{
    ks_err err = {{0}};
    int rc;

    memset(c, 0, sizeof(*c));
    if (ks_config_load(&c->cfg, &err) != KS_OK) {
        admin_error("%s", err.msg);
        return EXIT_CONFIG;
    }
    ks_log_setup("stderr", c->cfg.log_level, "p11mk-admin");
    if (need_keyfile && is_default_source(&c->cfg)) {
        if ((rc = adopt_key_file(c, o)) != EXIT_OK)
            return rc;
        ks_config_free(&c->cfg);
        if (ks_config_load(&c->cfg, &err) != KS_OK) {
            admin_error("%s", err.msg);
            return EXIT_CONFIG;
        }
    }
    if ((rc = ks_mkey_load(&c->cfg, &c->mk, &err)) != KS_OK) {
        admin_error("%s", err.msg[0] ? err.msg : ks_strerror(rc));
        return EXIT_KEY;
    }
    if (!is_default_source(&c->cfg)) {
        if ((rc = ks_reg_load(c->cfg.master_key, c->cfg.key_file_mode, &c->regs, &err)) != KS_OK) {
            admin_error("%s", err.msg);
            return EXIT_KEY;
        }
        c->have_regs = true;
    }
    if ((rc = ks_open(c->cfg.keystore, &c->mk, 0, &c->st, &err)) != KS_OK) {
        admin_error("%s", err.msg[0] ? err.msg : ks_strerror(rc));
        return open_exit(rc);
    }
    return EXIT_OK;
}

static int save_regs(rot_ctx *c)
{
    ks_err err = {{0}};
    if (ks_reg_save(c->cfg.master_key, &c->regs, &err) != KS_OK) {
        admin_error("%s", err.msg);
        return EXIT_KEY;
    }
    return EXIT_OK;
}

/* The registers after a commit: NEW is CURRENT, the old CURRENT heads the history. */
static void regs_promote(ks_registers *r)
{
    if (!r->has_new)
        return;
    size_t n = r->n_old < KS_REG_MAX_OLD ? r->n_old : KS_REG_MAX_OLD - 1;
    memmove(&r->old[1], &r->old[0], n * sizeof(r->old[0]));
    r->old[0] = r->current;
    r->n_old = n + 1;
    r->current = r->staged;
    r->has_new = false;
    ks_mkey_clear(&r->staged);
}

/* Bring registers that lag behind the keystore up to date (after a crash). */
static int regs_repair(rot_ctx *c, const ks_info *info)
{
    if (!c->have_regs)
        return EXIT_OK;
    uint8_t k[KS_KCV_LEN];
    if (info->rot_state == KS_ROT_IDLE && c->regs.has_new) {
        ks_mkey_kcv(&c->regs.staged, k);
        if (CRYPTO_memcmp(k, info->kcv, KS_KCV_LEN) == 0) {
            regs_promote(&c->regs);
            printf("Repaired the key file: the committed key is now CURRENT there too.\n");
        } else {
            c->regs.has_new = false; /* a stage that never reached the keystore, or an aborted one */
            ks_mkey_clear(&c->regs.staged);
            printf("Repaired the key file: dropped a NEW key the keystore does not use.\n");
        }
        return save_regs(c);
    }
    return EXIT_OK;
}

/* ---- terminal input ----------------------------------------------------- */

static FILE *tty_open(void) { return fopen("/dev/tty", "r+e"); }

static int read_line(FILE *tty, const char *prompt, char *buf, size_t cap, bool echo)
{
    struct termios old, quiet;
    bool restore = false;
    /* Echo goes off (and type-ahead is dropped) before the prompt shows, so
     * that nothing typed after the prompt is echoed or thrown away. */
    if (!echo && tcgetattr(fileno(tty), &old) == 0) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        restore = tcsetattr(fileno(tty), TCSAFLUSH, &quiet) == 0;
    }
    fputs(prompt, tty);
    fflush(tty);
    char *ok = fgets(buf, (int)cap, tty);
    if (restore) {
        tcsetattr(fileno(tty), TCSANOW, &old);
        fputc('\n', tty);
    }
    if (!ok)
        return -1;
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

bool admin_confirm(const admin_opts *o, const char *question)
{
    char ans[16];
    FILE *tty;
    if (o->yes)
        return true;
    if (!(tty = tty_open())) {
        admin_error("no terminal to ask for confirmation; add --yes to proceed without asking");
        return false;
    }
    bool yes = read_line(tty, question, ans, sizeof(ans), true) == 0 && (ans[0] == 'y' || ans[0] == 'Y');
    fclose(tty);
    return yes;
}

static const char *weak_reason(const char *p)
{
    size_t len = strlen(p);
    int cls = 0, distinct = 0;
    bool seen[256] = {false}, lower = false, upper = false, digit = false, other = false;
    if (len < KS_PASS_MIN)
        return "too short: use at least 12 characters";
    for (const unsigned char *q = (const unsigned char *)p; *q; q++) {
        if (!seen[*q])
            distinct++;
        seen[*q] = true;
        lower |= islower(*q) != 0;
        upper |= isupper(*q) != 0;
        digit |= isdigit(*q) != 0;
        other |= !isalnum(*q);
    }
    cls = lower + upper + digit + other;
    if (distinct < 6 || cls < 2)
        return "too weak: mix at least two kinds of characters (letters, digits, punctuation) and avoid repeats";
    return NULL;
}

/* Read one secret twice from the terminal; EXIT_OK or an exit code. */
static int read_twice(FILE *tty, const char *what, char *p1, size_t cap)
{
    char p2[512], prompt[96];
    snprintf(prompt, sizeof(prompt), "%s: ", what);
    if (read_line(tty, prompt, p1, cap, false) != 0 || read_line(tty, "Enter it again: ", p2, sizeof(p2), false) != 0) {
        admin_error("nothing was entered; nothing was changed");
        return EXIT_FAILED;
    }
    bool same = strlen(p1) == strlen(p2) && CRYPTO_memcmp(p1, p2, strlen(p1)) == 0;
    OPENSSL_cleanse(p2, sizeof(p2));
    if (!same) {
        admin_error("the two entries differ; nothing was changed. Run the command again");
        return EXIT_FAILED;
    }
    return EXIT_OK;
}

/* The new key: generated, from a passphrase file, typed twice, or in parts. */
static int new_key(const admin_opts *o, ks_mkey *mk)
{
    char secrets[KS_PARTS_MAX][512];
    const char *ptrs[KS_PARTS_MAX];
    unsigned n = o->parts ? o->parts : 1;
    const char *why;
    int rc = EXIT_OK;

    if (!o->passphrase_file && !o->passphrase && !o->parts)
        return ks_mkey_generate(mk) == KS_OK ? EXIT_OK : EXIT_FAILED;
    memset(secrets, 0, sizeof(secrets));
    if (o->passphrase_file) {
        FILE *f = fopen(o->passphrase_file, "re");
        for (unsigned i = 0; rc == EXIT_OK && i < n; i++) {
            if (!f || !fgets(secrets[i], sizeof(secrets[i]), f)) {
                admin_error("cannot read %s from %s: %s", n > 1 ? "one key part per line" : "a passphrase",
                            o->passphrase_file, f ? "too few lines" : strerror(errno));
                rc = EXIT_USAGE;
            }
            secrets[i][strcspn(secrets[i], "\r\n")] = '\0';
        }
        if (f)
            fclose(f);
    } else {
        FILE *tty = tty_open();
        if (!tty) {
            admin_error("no terminal to read the new master key from; use --passphrase-file FILE or --generate");
            return EXIT_USAGE;
        }
        for (unsigned i = 0; rc == EXIT_OK && i < n; i++) {
            char what[64];
            if (n > 1)
                snprintf(what, sizeof(what), "Key part %u of %u", i + 1, n);
            else
                snprintf(what, sizeof(what), "New master key passphrase");
            rc = read_twice(tty, what, secrets[i], sizeof(secrets[i]));
        }
        fclose(tty);
    }
    for (unsigned i = 0; rc == EXIT_OK && i < n; i++) {
        if ((why = weak_reason(secrets[i])) != NULL) {
            if (n > 1)
                admin_error("key part %u is %s; nothing was changed", i + 1, why);
            else
                admin_error("the passphrase is %s; nothing was changed", why);
            rc = EXIT_USAGE;
        }
        ptrs[i] = secrets[i];
    }
    if (rc == EXIT_OK) {
        int krc = n > 1 ? ks_mkey_from_parts(ptrs, n, mk) : ks_mkey_from_passphrase(secrets[0], strlen(secrets[0]), mk);
        rc = krc == KS_OK ? EXIT_OK : EXIT_FAILED;
    }
    OPENSSL_cleanse(secrets, sizeof(secrets));
    return rc;
}

/* ---- steps ------------------------------------------------------------------ */

static int step_exit(int rc)
{
    switch (rc) {
    case KS_OK: return EXIT_OK;
    case KS_EBUSY: return EXIT_STATE;
    case KS_EEXIST:
    case KS_EINVAL: return EXIT_STATE;
    case KS_ENOKEY:
    case KS_EWRONGKEY: return EXIT_KEY;
    case KS_EROFS: return EXIT_KEYSTORE;
    default: return EXIT_FAILED;
    }
}

static int do_stage(rot_ctx *c, const ks_mkey *key)
{
    ks_err err = {{0}};
    ks_info info;
    int rc;

    if (ks_get_info(c->st, &info) != KS_OK)
        return EXIT_KEYSTORE;
    if (info.rot_state != KS_ROT_IDLE) {
        admin_error("a new master key is already staged (epoch %u, %s): finish with 'p11mk-admin rewrap' and "
                    "'p11mk-admin commit', or withdraw it with 'p11mk-admin abort'",
                    info.new_epoch, ks_rot_state_name(info.rot_state));
        return EXIT_STATE;
    }
    c->regs.has_new = true;
    c->regs.staged = *key;
    if ((rc = save_regs(c)) != EXIT_OK)
        return rc;
    rc = ks_rot_stage(c->st, key, &err);
    if (rc != KS_OK) {
        c->regs.has_new = false;
        ks_mkey_clear(&c->regs.staged);
        save_regs(c);
        admin_error("%s; nothing was changed: the keystore stays usable under the current key",
                    err.msg[0] ? err.msg : ks_strerror(rc));
        return step_exit(rc);
    }
    uint8_t kcv[KS_KCV_LEN];
    char hex[2 * KS_KCV_LEN + 1];
    ks_mkey_kcv(key, kcv);
    ks_kcv_hex(kcv, hex);
    printf("Staged a new master key as epoch %u (check value %s). New and changed records use it from now on.\n",
           info.epoch + 1, hex);
    return EXIT_OK;
}

typedef struct {
    const admin_opts *o;
    double t0;
    bool tty;
} progress;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int progress_cb(const ks_rot_progress *p, void *arg)
{
    progress *pr = arg;
    if (!pr->tty || pr->o->quiet || pr->o->json)
        return 0;
    double dt = now_s() - pr->t0, rate = dt > 0 ? (double)p->done / dt : 0;
    uint64_t total = p->done + p->remaining;
    int width = 30, fill = total ? (int)((double)p->done * width / (double)total) : width;
    fprintf(stderr, "\r  [%.*s%*s] %llu/%llu records  %.0f/s  ETA %.0fs ", fill, "##############################",
            width - fill, "", (unsigned long long)p->done, (unsigned long long)total, rate,
            rate > 0 ? (double)p->remaining / rate : 0.0);
    fflush(stderr);
    return 0;
}

static int do_rewrap(rot_ctx *c, const admin_opts *o)
{
    ks_err err = {{0}};
    progress pr = {o, now_s(), isatty(2) != 0};
    ks_rot_progress last = {0, 0};
    uint32_t ep[8];
    uint64_t before[8];
    size_t nf = 0;
    ks_info info;
    int rc;

    if (ks_get_info(c->st, &info) != KS_OK)
        return EXIT_KEYSTORE;
    ks_rot_count(c->st, ep, before, 8, &nf);
    rc = ks_rot_rewrap(c->st, o->batch, progress_cb, &pr, &err);
    if (pr.tty && !o->quiet && !o->json)
        fputc('\n', stderr);
    if (rc != KS_OK) {
        admin_error("%s; the keystore stays usable (records are read under either key); run 'p11mk-admin rewrap' "
                    "again to resume", err.msg[0] ? err.msg : ks_strerror(rc));
        return step_exit(rc);
    }
    double dt = now_s() - pr.t0;
    for (size_t i = 0; i < nf; i++)
        if (ep[i] == info.epoch)
            last.done = before[i];
    if (o->json)
        printf("{\"step\": \"rewrap\", \"records\": %llu, \"seconds\": %.3f, \"rate\": %.0f}\n",
               (unsigned long long)last.done, dt, dt > 0 ? (double)last.done / dt : 0.0);
    else if (!o->quiet)
        printf("Rewrapped %llu records in %.2f s (%.0f records/s). Ready to commit.\n",
               (unsigned long long)last.done, dt, dt > 0 ? (double)last.done / dt : 0.0);
    return EXIT_OK;
}

static int do_commit(rot_ctx *c, const admin_opts *o)
{
    ks_err err = {{0}};
    ks_info info;
    int rc = ks_rot_commit(c->st, &err);
    if (rc != KS_OK) {
        admin_error("%s; nothing was changed", err.msg[0] ? err.msg : ks_strerror(rc));
        return step_exit(rc);
    }
    if (c->have_regs && c->regs.has_new)
        regs_promote(&c->regs);
    if ((rc = save_regs(c)) != EXIT_OK) {
        admin_error("the keystore is committed, but the key file could not be updated; run 'p11mk-admin commit' "
                    "again to repair it");
        return rc;
    }
    ks_get_info(c->st, &info);
    if (!o->quiet && !o->json)
        printf("Committed: epoch %u is current. The previous key is kept in the history (%zu key%s); running "
               "applications switch on their next operation.\n",
               info.epoch, c->regs.n_old, c->regs.n_old == 1 ? "" : "s");
    return EXIT_OK;
}

/* ---- commands ---------------------------------------------------------------- */

int admin_stage(const admin_opts *o)
{
    rot_ctx c;
    ks_mkey key;
    int rc = rot_open(&c, o, true);
    if (rc == EXIT_OK)
        rc = new_key(o, &key);
    if (rc == EXIT_OK)
        rc = do_stage(&c, &key);
    ks_mkey_clear(&key);
    rot_close(&c);
    return rc;
}

int admin_rewrap(const admin_opts *o)
{
    rot_ctx c;
    int rc = rot_open(&c, o, false);
    if (rc == EXIT_OK)
        rc = do_rewrap(&c, o);
    rot_close(&c);
    return rc;
}

int admin_commit(const admin_opts *o)
{
    rot_ctx c;
    ks_info info;
    int rc = rot_open(&c, o, false);
    if (rc == EXIT_OK && ks_get_info(c.st, &info) == KS_OK && info.rot_state == KS_ROT_IDLE && c.have_regs &&
        c.regs.has_new) {
        rc = regs_repair(&c, &info); /* a commit that crashed before the key file update */
        rot_close(&c);
        return rc;
    }
    if (rc == EXIT_OK)
        rc = do_commit(&c, o);
    rot_close(&c);
    return rc;
}

int admin_abort(const admin_opts *o)
{
    rot_ctx c;
    ks_err err = {{0}};
    progress pr = {o, now_s(), isatty(2) != 0};
    int rc = rot_open(&c, o, false);
    if (rc == EXIT_OK) {
        int krc = ks_rot_abort(c.st, o->batch, progress_cb, &pr, &err);
        if (pr.tty && !o->quiet)
            fputc('\n', stderr);
        if (krc != KS_OK) {
            admin_error("%s", err.msg[0] ? err.msg : ks_strerror(krc));
            rc = step_exit(krc);
        } else {
            if (c.have_regs) {
                c.regs.has_new = false;
                ks_mkey_clear(&c.regs.staged);
                rc = save_regs(&c);
            }
            if (rc == EXIT_OK && !o->quiet)
                printf("Aborted: every record is under the current key again; the staged key was discarded.\n");
        }
    }
    rot_close(&c);
    return rc;
}

static int stage_rewrap_commit(rot_ctx *c, const admin_opts *o, const ks_mkey *key)
{
    int rc = do_stage(c, key);
    if (rc == EXIT_OK)
        rc = do_rewrap(c, o);
    if (rc == EXIT_OK)
        rc = do_commit(c, o);
    if (rc != EXIT_OK)
        fprintf(stderr, "p11mk-admin: the keystore stays fully usable; finish with 'p11mk-admin rewrap' and "
                        "'p11mk-admin commit', or undo with 'p11mk-admin abort'.\n");
    return rc;
}

int admin_rotate(const admin_opts *o)
{
    rot_ctx c;
    ks_mkey key;
    int rc = rot_open(&c, o, true);
    if (rc == EXIT_OK)
        rc = ks_mkey_generate(&key) == KS_OK ? EXIT_OK : EXIT_FAILED;
    if (rc == EXIT_OK)
        rc = stage_rewrap_commit(&c, o, &key);
    ks_mkey_clear(&key);
    rot_close(&c);
    return rc;
}

static void auto_off_after_manual(rot_ctx *c, uint64_t interval);

int admin_set_master_key(const admin_opts *o)
{
    rot_ctx c;
    ks_mkey key;
    admin_opts oo = *o;
    ks_info info;
    int rc;

    if (!oo.passphrase_file && !oo.parts)
        oo.passphrase = true;
    rc = rot_open(&c, &oo, true);
    if (rc == EXIT_OK && ks_get_info(c.st, &info) == KS_OK && info.rot_state != KS_ROT_IDLE) {
        admin_error("a rotation is already under way (%s); finish it with 'p11mk-admin rewrap' and "
                    "'p11mk-admin commit', or undo it with 'p11mk-admin abort'", ks_rot_state_name(info.rot_state));
        rc = EXIT_STATE;
    }
    if (rc == EXIT_OK)
        rc = new_key(&oo, &key);
    if (rc == EXIT_OK) {
        printf("This replaces the master key of keystore %s (epoch %u -> %u): every record is resealed under the\n"
               "new key while applications keep running, then the old key moves to the history.\n",
               c.cfg.keystore, info.epoch, info.epoch + 1);
        if (info.auto_interval)
            printf("Automatic rotation is on: setting the key by hand disables it.\n");
        if (!admin_confirm(o, "Continue? [y/N] ")) {
            printf("Nothing was changed.\n");
            rc = EXIT_FAILED;
        } else {
            rc = stage_rewrap_commit(&c, &oo, &key);
            if (rc == EXIT_OK)
                auto_off_after_manual(&c, info.auto_interval);
        }
    }
    ks_mkey_clear(&key);
    rot_close(&c);
    return rc;
}

int admin_clear_history(const admin_opts *o)
{
    rot_ctx c;
    int rc = rot_open(&c, o, false);
    if (rc == EXIT_OK && !c.have_regs) {
        printf("The keystore uses the built-in default key: there is no history to clear.\n");
    } else if (rc == EXIT_OK && c.regs.n_old == 0) {
        printf("The history is empty.\n");
    } else if (rc == EXIT_OK) {
        printf("This destroys %zu retired master key%s: backups and copies sealed under %s can no longer be\n"
               "opened.\n", c.regs.n_old, c.regs.n_old == 1 ? "" : "s", c.regs.n_old == 1 ? "it" : "them");
        if (!admin_confirm(o, "Destroy them? [y/N] ")) {
            printf("Nothing was changed.\n");
            rc = EXIT_FAILED;
        } else {
            for (size_t i = 0; i < c.regs.n_old; i++)
                ks_mkey_clear(&c.regs.old[i]);
            c.regs.n_old = 0;
            rc = save_regs(&c);
            if (rc == EXIT_OK)
                printf("History cleared.\n");
        }
    }
    rot_close(&c);
    return rc;
}

static void verify_cb(char kind, uint32_t token, uint64_t oid, int err, void *arg)
{
    (void)arg;
    if (kind == 'T')
        printf("  token %u: %s\n", token, ks_strerror(err));
    else if (kind == 'I')
        printf("  token %u: an index entry points at object %llu, which does not exist\n", token,
               (unsigned long long)oid);
    else if (kind == 'N')
        printf("  token %u object %llu: its token does not exist\n", token, (unsigned long long)oid);
    else
        printf("  token %u object %llu: %s\n", token, (unsigned long long)oid, ks_strerror(err));
}

static void index_cb(CK_SLOT_ID slot, uint64_t oid, CK_ATTRIBUTE_TYPE t, void *arg)
{
    (void)arg;
    printf("  token %lu object %llu: not found through the index by its %s\n", (unsigned long)slot,
           (unsigned long long)oid, t == CKA_ID ? "CKA_ID" : t == CKA_LABEL ? "CKA_LABEL" : "CKA_CLASS");
}

int admin_verify(const admin_opts *o)
{
    rot_ctx c;
    uint64_t checked = 0, failed = 0;
    int rc = rot_open(&c, o, false);
    if (rc == EXIT_OK) {
        int krc = ks_verify(c.st, verify_cb, NULL, &checked, &failed);
        tok_ctx *ctx = NULL;
        unsigned long long missing = 0;
        long long objs = -1;
        if (krc == KS_OK && tok_ctx_open(TOK_CTX_STDERR, &ctx) == CKR_OK) {
            objs = tok_verify_index(ctx, index_cb, NULL, &missing);
            tok_ctx_close(ctx);
        }
        failed += missing;
        if (krc != KS_OK || objs < 0) {
            admin_error("cannot read the keystore: %s", ks_strerror(krc != KS_OK ? krc : KS_EIO));
            rc = EXIT_KEYSTORE;
        } else if (failed) {
            printf("%llu of %llu records failed: restore the keystore from a backup, or delete the objects "
                   "named above.\n", (unsigned long long)failed, (unsigned long long)checked);
            rc = EXIT_KEYSTORE;
        } else {
            printf("Verified %llu records: each opens under the key of its epoch; the indexes agree with %lld "
                   "objects.\n", (unsigned long long)checked, objs);
        }
    }
    rot_close(&c);
    return rc;
}

/* ---- automatic rotation ---------------------------------------------------- */

/* "30d", "12h", "90m", "3600s" or plain seconds; 0 on error. */
static uint64_t parse_duration(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mul = 1;
    if (errno || end == s || v == 0)
        return 0;
    if (*end == 'd' || *end == 'D')
        mul = 86400;
    else if (*end == 'h' || *end == 'H')
        mul = 3600;
    else if (*end == 'm' || *end == 'M')
        mul = 60;
    else if (*end == 'w' || *end == 'W')
        mul = 7 * 86400;
    else if (*end != 's' && *end != '\0')
        return 0;
    if (*end && end[1])
        return 0;
    if (v > UINT64_MAX / mul)
        return 0;
    return (uint64_t)v * mul;
}

void admin_format_time(uint64_t t, char *out, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!t) {
        snprintf(out, n, "never");
        return;
    }
    gmtime_r(&tt, &tm);
    strftime(out, n, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

void admin_format_duration(uint64_t s, char *out, size_t n)
{
    if (s % 86400 == 0)
        snprintf(out, n, "%llud", (unsigned long long)(s / 86400));
    else if (s % 3600 == 0)
        snprintf(out, n, "%lluh", (unsigned long long)(s / 3600));
    else if (s % 60 == 0)
        snprintf(out, n, "%llum", (unsigned long long)(s / 60));
    else
        snprintf(out, n, "%llus", (unsigned long long)s);
}

int admin_auto_update(const admin_opts *o)
{
    rot_ctx c;
    ks_info info;
    char when[64], every[32];
    int rc;

    if (!o->interval && !o->disable && !o->run) {
        admin_error("say what to do: auto-update --interval DURATION | --disable | run");
        return EXIT_USAGE;
    }
    if ((o->interval != NULL) + o->disable + o->run > 1) {
        admin_error("auto-update takes one of --interval, --disable or run");
        return EXIT_USAGE;
    }
    uint64_t secs = 0;
    if (o->interval && (secs = parse_duration(o->interval)) < 60) {
        admin_error("--interval takes a duration of at least a minute, such as 30d, 12h or 90m (got '%s')",
                    o->interval);
        return EXIT_USAGE;
    }
    if ((rc = rot_open(&c, o, o->interval || o->run)) != EXIT_OK)
        return rc;
    if (ks_get_info(c.st, &info) != KS_OK) {
        rot_close(&c);
        return EXIT_KEYSTORE;
    }
    if (o->interval || o->disable) {
        int krc = ks_rot_set_auto(c.st, secs);
        if (krc != KS_OK) {
            admin_error("cannot store the setting: %s", ks_strerror(krc));
            rot_close(&c);
            return step_exit(krc);
        }
        ks_get_info(c.st, &info);
        if (secs) {
            admin_format_duration(secs, every, sizeof(every));
            admin_format_time(info.last_rotation + secs, when, sizeof(when));
            printf("Automatic rotation every %s; next due %s. 'p11mk-admin auto-update run' (the p11mk-auto-update "
                   "timer) rotates when due.\n", every, when);
        } else {
            printf("Automatic rotation disabled; the current key is kept.\n");
        }
        rot_close(&c);
        return EXIT_OK;
    }
    /* run: idempotent; finishes an interrupted rotation first. */
    if (info.rot_state == KS_ROT_ABORTING) {
        admin_error("an abort is under way; finish it with 'p11mk-admin abort'");
        rot_close(&c);
        return EXIT_STATE;
    }
    if (info.rot_state != KS_ROT_IDLE) {
        printf("Finishing the rotation under way (%s).\n", ks_rot_state_name(info.rot_state));
        rc = do_rewrap(&c, o);
        if (rc == EXIT_OK)
            rc = do_commit(&c, o);
        rot_close(&c);
        return rc;
    }
    uint64_t now = (uint64_t)time(NULL);
    const char *fake = getenv("P11MK_NOW"); /* test hook: pretend the clock says this (unix time) */
    if (fake && *fake)
        now = strtoull(fake, NULL, 10);
    if (!info.auto_interval) {
        printf("Automatic rotation is off; nothing to do.\n");
    } else if (now < info.last_rotation + info.auto_interval) {
        admin_format_time(info.last_rotation + info.auto_interval, when, sizeof(when));
        printf("Not due until %s; nothing to do.\n", when);
    } else {
        ks_mkey key;
        rc = ks_mkey_generate(&key) == KS_OK ? EXIT_OK : EXIT_FAILED;
        if (rc == EXIT_OK)
            rc = stage_rewrap_commit(&c, o, &key);
        ks_mkey_clear(&key);
    }
    rot_close(&c);
    return rc;
}

/* A key set by hand ends automatic rotation, as the device in the seed does. */
static void auto_off_after_manual(rot_ctx *c, uint64_t interval)
{
    if (interval && ks_rot_set_auto(c->st, 0) == KS_OK)
        printf("Automatic rotation is now disabled (the key was set by hand); re-enable it with "
               "'p11mk-admin auto-update --interval DURATION'.\n");
}

/* ---- copies ------------------------------------------------------------------ */

static bool need_file(const admin_opts *o, const char *cmd)
{
    if (o->file)
        return true;
    admin_error("%s needs a FILE argument", cmd);
    return false;
}

int admin_backup(const admin_opts *o)
{
    rot_ctx c;
    ks_err err = {{0}};
    if (!need_file(o, "backup"))
        return EXIT_USAGE;
    int rc = rot_open(&c, o, false);
    if (rc == EXIT_OK) {
        int krc = ks_backup(c.st, o->file, &err);
        if (krc != KS_OK) {
            admin_error("%s", err.msg[0] ? err.msg : ks_strerror(krc));
            rc = EXIT_FAILED;
        } else if (!o->quiet) {
            ks_info info;
            ks_get_info(c.st, &info);
            printf("Backup written to %s (epoch %u, sealed under the current master key: keep the key file too).\n",
                   o->file, info.epoch);
        }
    }
    rot_close(&c);
    return rc;
}

int admin_export(const admin_opts *o)
{
    rot_ctx c;
    ks_err err = {{0}};
    if (!o->to_default) {
        admin_error("export writes a copy under the built-in default key: say so with --to-default");
        return EXIT_USAGE;
    }
    if (!need_file(o, "export"))
        return EXIT_USAGE;
    int rc = rot_open(&c, o, false);
    if (rc == EXIT_OK) {
        int krc = ks_export_default(c.st, o->file, &err);
        if (krc != KS_OK) {
            admin_error("%s", err.msg[0] ? err.msg : ks_strerror(krc));
            rc = step_exit(krc);
        } else if (!o->quiet) {
            printf("Exported to %s, resealed under the built-in default key: anyone with the file can read it, so\n"
                   "move it over a trusted channel. On the other host: p11mk-admin restore %s\n", o->file, o->file);
        }
    }
    rot_close(&c);
    return rc;
}

int admin_restore(const admin_opts *o)
{
    ks_config cfg;
    ks_mkey mk;
    ks_err err = {{0}};
    int rc;
    if (!need_file(o, "restore"))
        return EXIT_USAGE;
    if (ks_config_load(&cfg, &err) != KS_OK) {
        admin_error("%s", err.msg);
        return EXIT_CONFIG;
    }
    ks_log_setup("stderr", cfg.log_level, "p11mk-admin");
    if ((rc = ks_mkey_load(&cfg, &mk, &err)) != KS_OK) {
        admin_error("%s", err.msg[0] ? err.msg : ks_strerror(rc));
        ks_config_free(&cfg);
        return EXIT_KEY;
    }
    printf("This replaces keystore %s with %s.\n", cfg.keystore, o->file);
    if (!admin_confirm(o, "Continue? [y/N] ")) {
        printf("Nothing was changed.\n");
        rc = EXIT_FAILED;
    } else {
        int krc = ks_restore(cfg.keystore, o->file, &mk, &err);
        if (krc != KS_OK) {
            admin_error("%s", err.msg[0] ? err.msg : ks_strerror(krc));
            rc = krc == KS_EBUSY ? EXIT_STATE : open_exit(krc);
        } else {
            printf("Restored %s from %s.\n", cfg.keystore, o->file);
            rc = EXIT_OK;
        }
    }
    ks_mkey_clear(&mk);
    ks_config_free(&cfg);
    return rc;
}
