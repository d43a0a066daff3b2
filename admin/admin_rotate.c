/* p11mk-admin: the master-key commands: set-master-key, rotate, stage,
 * rewrap, commit, abort, clear-history, auto-update, backup, export,
 * restore, verify.
 *
 * This file talks to people: it reads keys and answers, shows progress and
 * prints results. The protocol (locks, the order of key file and keystore
 * writes, crash repair, the re-check after a prompt) is the keystore's:
 * keystore/ks_lifecycle.c. A command that asks a question first takes a
 * view of the state, asks, and hands that view to the step as what the
 * person confirmed; the step refuses (exit 6) if the state moved meanwhile. */
#include "admin.h"
#include "keystore/ks.h"
#include "token/tok_admin.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>


/* Report a failed keystore call: the sentence the keystore wrote, or the code's string. */
static int fail(int rc, const ks_err *err, const char *tail)
{
    admin_error("%s%s", err->msg[0] ? err->msg : ks_strerror(rc), tail ? tail : "");
    return admin_exit_for(rc, err);
}

static void kcv_hex(const uint8_t kcv[KS_KCV_LEN], char out[2 * KS_KCV_LEN + 1]) { ks_kcv_hex(kcv, out); }

/* Load the configuration and open the keystore for lifecycle work. */
static int mk_open(ks_config *cfg, ks_mk **m)
{
    ks_err err = KS_ERR_INIT;
    int rc;
    *m = NULL;
    if ((rc = ks_config_load(cfg, &err)) != KS_OK)
        return fail(rc, &err, NULL);
    ks_log_setup("stderr", cfg->log_level, "p11mk-admin");
    if ((rc = ks_mk_open(cfg, m, &err)) != KS_OK) {
        ks_config_free(cfg);
        return fail(rc, &err, NULL);
    }
    return EXIT_OK;
}

static void mk_close(ks_config *cfg, ks_mk *m)
{
    ks_mk_close(m);
    ks_config_free(cfg);
}

/* ---- progress ------------------------------------------------------------------ */

typedef struct {
    const admin_opts *o;
    double t0;
    bool tty;
    bool drawn;
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
    pr->drawn = true;
    return 0;
}

static void waiting_cb(const char *what, void *arg)
{
    progress *pr = arg;
    if (!pr->o->quiet)
        fprintf(stderr, "p11mk-admin: waiting for %s...\n", what);
}

static void progress_end(progress *pr)
{
    if (pr->drawn)
        fputc('\n', stderr);
    pr->drawn = false;
}

static ks_mk_opts step_opts(const admin_opts *o, const char *command, progress *pr)
{
    pr->o = o;
    pr->t0 = now_s();
    pr->tty = isatty(2) != 0;
    pr->drawn = false;
    ks_mk_opts ko = {
        .wait_ms = (unsigned)(o->wait_s < 0 ? 10000 : o->wait_s * 1000),
        .waiting = waiting_cb,
        .batch = o->batch,
        .progress = progress_cb,
        .arg = pr,
        .key_file = o->key_file,
        .command = command,
    };
    return ko;
}

/* What a step did besides its own work. */
static void say_repairs(const admin_opts *o, const ks_mk_result *r)
{
    if (o->quiet || o->json)
        return;
    if (r->key_file[0])
        printf("The master keys are now kept in %s (configuration %s names it).\n", r->key_file, r->config);
    if (r->repaired & KS_MK_REPAIRED_PROMOTED)
        printf("Repaired the key file: the committed key is now CURRENT there too.\n");
    if (r->repaired & KS_MK_REPAIRED_RETIRED)
        printf("Repaired the key file: a NEW key the keystore does not use was moved to the history.\n");
    if (r->repaired & KS_MK_REPAIRED_REORDERED)
        printf("Repaired the key file: its registers now name the keystore's keys (nothing was removed).\n");
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

/* One secret per line from a file: a line too long, a NUL byte or too few
 * lines is an error (never a secret silently cut, or its tail taken for the
 * next part). */
static int read_secret_file(const char *path, unsigned n, char secrets[][512])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat sb;
    FILE *f = NULL;
    char *line = NULL;
    size_t cap = 0;
    int rc = EXIT_OK;

    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || !(f = fdopen(fd, "r"))) {
        admin_error("cannot read %s: %s", path, fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return EXIT_USAGE;
    }
    if (sb.st_mode & 0077) /* what it holds makes the master key */
        fprintf(stderr, "p11mk-admin: warning: %s has mode %04o: other users may read the passphrase, which makes the "
                        "master key; run: chmod 600 %s (or remove it once the key is set)\n",
                path, (unsigned)(sb.st_mode & 0777), path);
    for (unsigned i = 0; rc == EXIT_OK && i < n; i++) {
        ssize_t len = getline(&line, &cap, f);
        if (len < 0) {
            admin_error("cannot read %s from %s: too few lines", n > 1 ? "one key part per line" : "a passphrase",
                        path);
            rc = EXIT_USAGE;
            break;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (strlen(line) != (size_t)len) {
            admin_error("line %u of %s holds a NUL byte; a passphrase is text", i + 1, path);
            rc = EXIT_USAGE;
        } else if ((size_t)len >= sizeof(secrets[i])) {
            admin_error("line %u of %s is longer than %zu characters", i + 1, path, sizeof(secrets[i]) - 1);
            rc = EXIT_USAGE;
        } else {
            memcpy(secrets[i], line, (size_t)len + 1);
        }
    }
    /* More parts than asked for: a key made of fewer than the file holds
     * would not be the one its holders expect (empty lines at the end aside). */
    for (ssize_t len; rc == EXIT_OK && (len = getline(&line, &cap, f)) >= 0;)
        if (strspn(line, "\r\n") != (size_t)len) {
            admin_error("%s holds more lines than the %u %s asked for; give --parts with the number of parts it "
                        "holds", path, n, n > 1 ? "parts" : "passphrase");
            rc = EXIT_USAGE;
        }
    if (line)
        OPENSSL_cleanse(line, cap);
    free(line);
    fclose(f);
    return rc;
}

/* The new key: generated, from a passphrase file, typed twice, or in parts.
 * alt: what else the command takes, for a message when there is no terminal. */
static int new_key(const admin_opts *o, const char *alt, ks_mkey *mk)
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
        rc = read_secret_file(o->passphrase_file, n, secrets);
    } else {
        FILE *tty = tty_open();
        if (!tty) {
            admin_error("no terminal to read the new master key from; use --passphrase-file FILE%s", alt);
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


/* ---- steps --------------------------------------------------------------------- */

static void print_committed(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    char cur[2 * KS_KCV_LEN + 1];
    ks_mk_view v;
    ks_err err = KS_ERR_INIT;
    size_t hist = 0;
    kcv_hex(r->kcv, cur);
    if (ks_mk_view_get(m, &v, &err) == KS_OK) {
        hist = v.n_history;
        ks_mk_view_free(&v);
    }
    if (o->json) {
        printf("{\"step\": \"commit\", \"epoch\": %u, \"kcv\": \"%s\", \"records\": %llu, \"seconds\": %.3f, "
               "\"history\": %zu}\n", r->epoch, cur, (unsigned long long)r->resealed, dt, hist);
    } else if (!o->quiet) {
        printf("Committed: epoch %u is current (check value %s). The previous key is kept in the history (%zu "
               "key%s); running applications switch on their next operation.\n", r->epoch, cur, hist,
               hist == 1 ? "" : "s");
    }
}

/* One lifecycle step of a command: the keystore call, how its failure is
 * explained beyond the keystore's own sentence, and what success prints. */
typedef struct {
    const char *command;
    int (*call)(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *arg);
    const void *arg;
    const ks_mk_view *expect;
    const char *(*fail_tail)(int krc, const ks_mk_result *r);
    void (*done)(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt);
} step_call;

static int run_step(const admin_opts *o, ks_mk *m, const step_call *c)
{
    ks_mk_result r;
    ks_err err = KS_ERR_INIT;
    progress pr;
    ks_mk_opts ko = step_opts(o, c->command, &pr);
    ko.expect = c->expect;
    int krc = c->call(m, &ko, &r, &err, c->arg), rc = EXIT_OK;
    progress_end(&pr);
    say_repairs(o, &r);
    if (krc != KS_OK)
        rc = fail(krc, &err, c->fail_tail ? c->fail_tail(krc, &r) : NULL);
    else if (c->done)
        c->done(o, m, &r, now_s() - pr.t0);
    ks_mk_result_free(&r);
    return rc;
}

/* A command that is one step, run on the configured keystore. */
static int one_step(const admin_opts *o, const step_call *c)
{
    ks_config cfg;
    ks_mk *m;
    int rc = mk_open(&cfg, &m);
    if (rc == EXIT_OK) {
        rc = run_step(o, m, c);
        mk_close(&cfg, m);
    }
    return rc;
}

static int call_stage(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *key)
{
    return ks_mk_stage(m, key, ko, r, err);
}

static const char *stage_tail(int krc, const ks_mk_result *r)
{
    (void)krc, (void)r;
    return "; nothing was staged: the keystore stays usable under the current key";
}

static void stage_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    char hex[2 * KS_KCV_LEN + 1];
    (void)m, (void)dt;
    if (o->quiet)
        return;
    kcv_hex(r->new_kcv, hex);
    if (r->joined)
        printf("This host now holds the master key staged as epoch %u (check value %s) by another host of the "
               "fleet. When every host holds it ('p11mk-admin status' lists them), run 'p11mk-admin rewrap' and "
               "'p11mk-admin commit' on any one host.\n", r->new_epoch, hex);
    else
        printf("Staged a new master key as epoch %u (check value %s). New and changed records use it from now "
               "on.\n", r->new_epoch, hex);
}

int admin_stage(const admin_opts *o)
{
    ks_config cfg;
    ks_mk *m;
    ks_mkey key;
    int rc = mk_open(&cfg, &m);
    if (rc != EXIT_OK)
        return rc;
    memset(&key, 0, sizeof(key));
    if ((rc = new_key(o, " or --generate", &key)) == EXIT_OK)
        rc = run_step(o, m, &(step_call){"stage", call_stage, &key, NULL, stage_tail, stage_done});
    ks_mkey_clear(&key);
    mk_close(&cfg, m);
    return rc;
}

static int call_rewrap(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *arg)
{
    (void)arg;
    return ks_mk_rewrap(m, ko, r, err);
}

static const char *rewrap_tail(int krc, const ks_mk_result *r)
{
    (void)r;
    return krc == KS_ESTATE || krc == KS_EBUSY ? NULL
                                               : "; the keystore stays usable (records are read under either key); "
                                                 "run 'p11mk-admin rewrap' again to resume";
}

static void rewrap_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    double rate = dt > 0 ? (double)r->resealed / dt : 0.0;
    (void)m;
    if (o->json)
        printf("{\"step\": \"rewrap\", \"records\": %llu, \"seconds\": %.3f, \"rate\": %.0f}\n",
               (unsigned long long)r->resealed, dt, rate);
    else if (!o->quiet)
        printf("Rewrapped %llu records in %.2f s (%.0f records/s). Ready to commit.\n",
               (unsigned long long)r->resealed, dt, rate);
}

int admin_rewrap(const admin_opts *o)
{
    return one_step(o, &(step_call){"rewrap", call_rewrap, NULL, NULL, rewrap_tail, rewrap_done});
}

static int call_commit(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *arg)
{
    (void)arg;
    return ks_mk_commit(m, ko, r, err);
}

static const char *commit_tail(int krc, const ks_mk_result *r)
{
    (void)r;
    return krc == KS_ESTATE || krc == KS_EBUSY ? "; nothing was changed" : NULL;
}

static void commit_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    if (!(r->repaired & KS_MK_REPAIRED_PROMOTED) || r->new_epoch) /* not a repair alone */
        print_committed(o, m, r, dt);
}

int admin_commit(const admin_opts *o)
{
    return one_step(o, &(step_call){"commit", call_commit, NULL, NULL, commit_tail, commit_done});
}

static int call_abort(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *arg)
{
    (void)arg;
    return ks_mk_abort(m, ko, r, err);
}

static void abort_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    (void)m, (void)r, (void)dt;
    if (!o->quiet)
        printf("Aborted: every record is under the current key again; the staged key was moved to the history "
               "(a backup taken while it was staged needs it).\n");
}

int admin_abort(const admin_opts *o)
{
    return one_step(o, &(step_call){"abort", call_abort, NULL, NULL, NULL, abort_done});
}

/* rotate and set-master-key: the whole rotation under one lock. */
typedef struct {
    const ks_mkey *key; /* NULL: a generated key */
    unsigned flags;
} rotate_arg;

static int call_rotate(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *arg)
{
    const rotate_arg *a = arg;
    return ks_mk_rotate(m, a->key, a->flags, ko, r, err);
}

static const char *rotate_tail(int krc, const ks_mk_result *r)
{
    (void)krc;
    /* Past the stage, the rotation can be finished or undone by hand. */
    return r->new_epoch ? "; the keystore stays fully usable: finish with 'p11mk-admin rewrap' and 'p11mk-admin "
                          "commit', or undo with 'p11mk-admin abort'"
                        : NULL;
}

static void rotate_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    print_committed(o, m, r, dt);
    if (r->auto_disabled && !o->quiet)
        printf("Automatic rotation is now disabled (the key was set by hand); re-enable it with "
               "'p11mk-admin auto-update --interval DURATION'.\n");
}

int admin_rotate(const admin_opts *o)
{
    return one_step(o, &(step_call){"rotate", call_rotate, &(rotate_arg){NULL, 0}, NULL, rotate_tail, rotate_done});
}

/* Where a command tells what it is about to do: nowhere when it will not
 * ask (--yes) and was told to be quiet (-q) or to print JSON; standard
 * error under --json (standard output is the JSON's); else standard output. */
static FILE *plan_to(const admin_opts *o)
{
    if (o->yes && (o->quiet || o->json))
        return NULL;
    return o->json ? stderr : stdout;
}

int admin_set_master_key(const admin_opts *o)
{
    ks_config cfg;
    ks_mk *m;
    ks_mkey key;
    ks_mk_view v;
    ks_err err = KS_ERR_INIT;
    admin_opts oo = *o;
    int rc;

    if (o->generate) {
        admin_error("set-master-key sets a key you enter (typed, in parts or from --passphrase-file); for a "
                    "generated key run 'p11mk-admin rotate'");
        return EXIT_USAGE;
    }
    if (!oo.passphrase_file && !oo.parts)
        oo.passphrase = true;
    if ((rc = mk_open(&cfg, &m)) != EXIT_OK)
        return rc;
    memset(&key, 0, sizeof(key));
    int krc = ks_mk_view_get(m, &v, &err);
    if (krc != KS_OK) {
        rc = fail(krc, &err, NULL);
        mk_close(&cfg, m);
        return rc;
    }
    if (v.rot_state != KS_ROT_IDLE) {
        admin_error("a rotation is already under way (%s): %s", ks_rot_state_name(v.rot_state),
                    ks_rot_busy_advice(v.rot_state));
        rc = EXIT_STATE;
    }
    if (rc == EXIT_OK)
        rc = new_key(&oo, " ('p11mk-admin rotate' stages, rewraps and commits a generated key)", &key);
    FILE *plan = plan_to(o);
    if (rc == EXIT_OK) {
        if (plan)
            fprintf(plan, "This replaces the master key of keystore %s (epoch %u -> %u): every record is resealed "
                          "under the\nnew key while applications keep running, then the old key moves to the "
                          "history.\n", cfg.keystore, v.epoch, v.epoch + 1);
        if (plan && v.auto_interval)
            fprintf(plan, "Automatic rotation is on: setting the key by hand disables it.\n");
        if (!admin_confirm(o, "Continue? [y/N] ")) {
            fprintf(plan ? plan : stdout, "Nothing was changed.\n");
            rc = EXIT_FAILED;
        } else {
            rc = run_step(&oo, m, &(step_call){"set-master-key", call_rotate, &(rotate_arg){&key, KS_MK_MANUAL}, &v,
                                               rotate_tail, rotate_done});
        }
    }
    ks_mkey_clear(&key);
    ks_mk_view_free(&v);
    mk_close(&cfg, m);
    return rc;
}

/* The entries clear-history would destroy (the same rule as the keystore's). */
static size_t would_destroy(const ks_mk_view *v, size_t keep, uint32_t before)
{
    size_t n = 0;
    for (size_t i = keep; i < v->n_history; i++)
        if (!before || v->history[i].epoch < before)
            n++;
    return n;
}

typedef struct {
    size_t keep;
    uint32_t before;
} clear_arg;

static int call_clear(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *arg)
{
    const clear_arg *a = arg;
    return ks_mk_clear_history(m, a->keep, a->before, ko, r, err);
}

static void clear_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    (void)m, (void)dt;
    if (o->json)
        printf("{\"step\": \"clear-history\", \"destroyed\": [");
    for (size_t i = 0; i < r->n_destroyed; i++) {
        char hex[2 * KS_KCV_LEN + 1];
        kcv_hex(r->destroyed[i].kcv, hex);
        if (o->json)
            printf("%s{\"epoch\": %u, \"kcv\": \"%s\"}", i ? ", " : "", r->destroyed[i].epoch, hex);
        else if (!o->quiet)
            printf("Destroyed epoch %u, check value %s\n", r->destroyed[i].epoch, hex);
    }
    if (o->json)
        printf("]}\n");
    else if (!o->quiet)
        printf("History cleared: %zu key%s destroyed.\n", r->n_destroyed, r->n_destroyed == 1 ? "" : "s");
}

int admin_clear_history(const admin_opts *o)
{
    ks_config cfg;
    ks_mk *m;
    ks_mk_view v;
    ks_err err = KS_ERR_INIT;
    size_t keep = o->has_keep ? o->keep : 0;
    int rc = mk_open(&cfg, &m);

    if (rc != EXIT_OK)
        return rc;
    int krc = ks_mk_view_get(m, &v, &err);
    if (krc != KS_OK) {
        rc = fail(krc, &err, NULL);
        mk_close(&cfg, m);
        return rc;
    }
    size_t n = would_destroy(&v, keep, o->before);
    FILE *plan = plan_to(o);
    if (!v.key_file) {
        if (plan)
            fprintf(plan, "The keystore uses the built-in default key: there is no history to clear.\n");
    } else if (v.n_history == 0) {
        if (plan)
            fprintf(plan, "The history is empty.\n");
    } else if (n == 0) {
        if (plan)
            fprintf(plan, "No retired key matches; nothing to destroy (%zu kept).\n", v.n_history);
    } else {
        if (plan)
            fprintf(plan, "This destroys %zu of %zu retired master key%s:\n", n, v.n_history,
                    v.n_history == 1 ? "" : "s");
        for (size_t i = keep; plan && i < v.n_history; i++) {
            char hex[2 * KS_KCV_LEN + 1], when[64];
            if (o->before && v.history[i].epoch >= o->before)
                continue;
            kcv_hex(v.history[i].kcv, hex);
            admin_format_time(v.history[i].retired, when, sizeof(when));
            fprintf(plan, "  epoch %u, check value %s, retired %s%s\n", v.history[i].epoch, hex, when,
                    v.history[i].aborted ? " (the staged key of an aborted rotation: backups made while that rotation "
                                           "was under way need it)"
                                         : "");
        }
        if (plan)
            fprintf(plan, "Backups and copies sealed under %s can no longer be opened.\n", n == 1 ? "it" : "them");
        if (!admin_confirm(o, "Destroy them? [y/N] ")) {
            fprintf(plan ? plan : stdout, "Nothing was changed.\n");
            rc = EXIT_FAILED;
        } else {
            clear_arg ca = {keep, o->before};
            /* --yes: the history as found under the lock; else the one shown */
            rc = run_step(o, m, &(step_call){"clear-history", call_clear, &ca, o->yes ? NULL : &v, NULL, clear_done});
        }
    }
    ks_mk_view_free(&v);
    mk_close(&cfg, m);
    return rc;
}

/* The findings about the keystore as a whole, which no record names: 'M' (it
 * is older than its key file, or its key file serves another keystore), 'F'
 * (its file is damaged). */
typedef struct {
    uint64_t whole, file, key;
} verify_counts;

static void verify_cb(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg)
{
    verify_counts *vc = arg;
    if (kind == 'M')
        vc->whole++;
    if (kind == 'F')
        vc->file++;
    if (kind == 'K')
        vc->key++;
    if (what && token)
        printf("  token %u: %s\n", token, what);
    else if (what)
        printf("  %s\n", what);
    else if (kind == 'T')
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
    ks_config cfg;
    ks_mk *m;
    uint64_t checked = 0, failed = 0;
    verify_counts vc = {0, 0, 0};
    (void)o;
    int rc = mk_open(&cfg, &m);
    if (rc == EXIT_OK) {
        int krc = ks_verify(ks_mk_store(m), verify_cb, &vc, &checked, &failed);
        uint64_t whole = vc.whole + vc.file + vc.key;
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
        } else if (vc.file) {
            printf("The keystore's file is damaged (above); restore it from a backup ('p11mk-admin restore').\n");
            rc = EXIT_KEYSTORE;
        } else if (failed > whole) {
            printf("%llu of %llu records failed: restore the keystore from a backup, or delete the objects "
                   "named above.\n", (unsigned long long)(failed - whole), (unsigned long long)checked);
            rc = EXIT_KEYSTORE;
        } else if (vc.key && failed == vc.key) {
            printf("The %llu records open under the keys of their epochs, but the key file lacks the key the "
                   "keystore writes under (above): nothing was changed.\n", (unsigned long long)checked);
            rc = EXIT_KEY;
        } else if (failed) {
            printf("The %llu records open under the keys of their epochs, but the keystore and its key file "
                   "disagree (above): nothing was changed.\n", (unsigned long long)checked);
            rc = EXIT_KEYSTORE;
        } else {
            printf("Verified %llu records: each opens under the key of its epoch; the indexes agree with %lld "
                   "objects.\n", (unsigned long long)checked, objs);
        }
        mk_close(&cfg, m);
    }
    return rc;
}

/* ---- automatic rotation ---------------------------------------------------- */

/* "30d", "12h", "90m", "2w", "3600s" or plain seconds; 0 on error or overflow. */
static uint64_t parse_duration(const char *s)
{
    char *end;
    if (!isdigit((unsigned char)s[0]))
        return 0; /* strtoull would take "-1" for a huge number */
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
    else if (*end != 's' && *end != 'S' && *end != '\0')
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

static int call_set_auto(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *secs)
{
    return ks_mk_set_auto(m, *(const uint64_t *)secs, ko, r, err);
}

static void set_auto_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    char when[64], every[32];
    (void)m, (void)dt;
    if (o->json) {
        printf("{\"step\": \"auto-update\", \"interval\": %llu, \"next_due\": %llu}\n",
               (unsigned long long)r->auto_interval, (unsigned long long)r->next_due);
        return;
    }
    if (o->quiet)
        return;
    if (!r->next_due) {
        printf("Automatic rotation disabled; the current key is kept.\n");
        return;
    }
    admin_format_duration(r->auto_interval, every, sizeof(every));
    admin_format_time(r->next_due, when, sizeof(when));
    printf("Automatic rotation every %s; next due %s. 'p11mk-admin auto-update run' (the p11mk-auto-update "
           "timer) rotates when due.\n", every, when);
}

static int call_auto_run(ks_mk *m, const ks_mk_opts *ko, ks_mk_result *r, ks_err *err, const void *now)
{
    return ks_mk_auto_run(m, *(const uint64_t *)now, ko, r, err);
}

static void auto_run_done(const admin_opts *o, ks_mk *m, const ks_mk_result *r, double dt)
{
    char when[64];
    if (r->finished && !o->quiet && !o->json)
        printf("Finished the rotation that was under way (epoch %u is current).\n", r->epoch);
    if (r->rotated) {
        print_committed(o, m, r, dt);
    } else if (!o->quiet && !o->json) {
        if (!r->next_due) {
            printf("Automatic rotation is off; nothing to do.\n");
        } else {
            admin_format_time(r->next_due, when, sizeof(when));
            printf("Not due until %s; nothing to do.\n", when);
        }
    }
}

int admin_auto_update(const admin_opts *o)
{
    if (!o->interval && !o->disable && !o->run) {
        admin_error("say what to do: auto-update --interval DURATION | --disable | run");
        return EXIT_USAGE;
    }
    if ((o->interval != NULL) + o->disable + o->run > 1) {
        admin_error("auto-update takes one of --interval, --disable or run");
        return EXIT_USAGE;
    }
    uint64_t secs = 0;
    if (o->interval) {
        secs = parse_duration(o->interval);
        if (secs < KS_AUTO_MIN || secs > KS_AUTO_MAX) {
            admin_error("--interval takes a duration from 1h to 3650d (10 years), such as 30d, 12h or 90m (got "
                        "'%s'); nothing was changed", o->interval);
            return EXIT_USAGE;
        }
    }
    if (o->interval || o->disable)
        return one_step(o, &(step_call){"auto-update", call_set_auto, &secs, NULL, NULL, set_auto_done});
    /* run: idempotent; the decision is the keystore's, under its lock. */
    uint64_t now = (uint64_t)time(NULL);
    const char *fake = getenv("P11MK_NOW"); /* test hook: pretend the clock says this (unix time) */
    if (fake && *fake)
        now = strtoull(fake, NULL, 10);
    return one_step(o, &(step_call){"auto-update run", call_auto_run, &now, NULL, NULL, auto_run_done});
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
    ks_config cfg;
    ks_mk *m;
    ks_err err = KS_ERR_INIT;
    ks_info info;
    progress pr;
    if (!need_file(o, "backup"))
        return EXIT_USAGE;
    int rc = mk_open(&cfg, &m);
    if (rc != EXIT_OK)
        return rc;
    ks_mk_opts ko = step_opts(o, "backup", &pr);
    int krc = ks_mk_backup(m, o->file, &ko, &info, &err);
    if (krc == KS_ECORRUPT || krc == KS_EBUSY) { /* the keystore's damage (5), another step (6) */
        rc = fail(krc, &err, NULL);
    } else if (krc != KS_OK) { /* the copy's destination, memory: nothing changed */
        admin_error("%s", err.msg[0] ? err.msg : ks_strerror(krc));
        rc = EXIT_FAILED;
    } else if (!o->quiet) {
        char k1[2 * KS_KCV_LEN + 1], k2[2 * KS_KCV_LEN + 1];
        kcv_hex(info.kcv, k1);
        kcv_hex(info.new_kcv, k2);
        printf("Backup written to %s. Restoring it needs the master key of epoch %u (check value %s)", o->file,
               info.epoch, k1);
        if (info.new_epoch)
            printf(" and the staged one of epoch %u (check value %s)", info.new_epoch, k2);
        printf(": the key file keeps retired keys until 'p11mk-admin clear-history'.\n");
    }
    mk_close(&cfg, m);
    return rc;
}

int admin_host_remove(const admin_opts *o)
{
    ks_config cfg;
    ks_mk *m;
    ks_err err = KS_ERR_INIT;
    progress pr;
    if (!o->file) {
        admin_error("host-remove needs the NAME of a host, as 'p11mk-admin status' lists it");
        return EXIT_USAGE;
    }
    int rc = mk_open(&cfg, &m);
    if (rc != EXIT_OK)
        return rc;
    ks_mk_opts ko = step_opts(o, "host-remove", &pr);
    int krc = ks_mk_host_remove(m, o->file, &ko, &err);
    if (krc != KS_OK) {
        admin_error("%s", err.msg[0] ? err.msg : ks_strerror(krc));
        rc = krc == KS_EBUSY ? EXIT_STATE : EXIT_FAILED;
    } else if (!o->quiet) {
        printf("Host %s no longer counts for rewrap and commit; it joins again when p11mk next opens the keystore "
               "there.\n", o->file);
    }
    mk_close(&cfg, m);
    return rc;
}

int admin_export(const admin_opts *o)
{
    ks_config cfg;
    ks_mk *m;
    ks_err err = KS_ERR_INIT;
    progress pr;
    if (!o->to_default) {
        admin_error("export writes a copy under the built-in default key: say so with --to-default");
        return EXIT_USAGE;
    }
    if (!need_file(o, "export"))
        return EXIT_USAGE;
    int rc = mk_open(&cfg, &m);
    if (rc != EXIT_OK)
        return rc;
    ks_mk_opts ko = step_opts(o, "export", &pr);
    int krc = ks_mk_export(m, o->file, &ko, &err);
    if (krc != KS_OK) {
        rc = krc == KS_EEXIST || krc == KS_EIO || krc == KS_ENOSPC ? (admin_error("%s", err.msg), EXIT_FAILED)
                                                                  : fail(krc, &err, NULL);
    } else if (!o->quiet) {
        printf("Exported to %s, resealed under the built-in default key: anyone with the file can read it, so\n"
               "move it over a trusted channel. On the other host: p11mk-admin restore %s\n", o->file, o->file);
    }
    mk_close(&cfg, m);
    return rc;
}

int admin_restore(const admin_opts *o)
{
    ks_config cfg;
    ks_mk_result r;
    ks_err err = KS_ERR_INIT;
    progress pr;
    int rc;
    if (!need_file(o, "restore"))
        return EXIT_USAGE;
    if (ks_config_load(&cfg, &err) != KS_OK) {
        admin_error("%s", err.msg);
        return EXIT_CONFIG;
    }
    ks_log_setup("stderr", cfg.log_level, "p11mk-admin");
    printf("This replaces keystore %s with %s (the copy is checked first: if it is refused, nothing changes).\n",
           cfg.keystore, o->file);
    fflush(stdout); /* before any error of the restore, on stderr */
    if (!admin_confirm(o, "Continue? [y/N] ")) {
        printf("Nothing was changed.\n");
        ks_config_free(&cfg);
        return EXIT_FAILED;
    }
    ks_mk_opts ko = step_opts(o, "restore", &pr);
    int krc = ks_mk_restore(&cfg, o->file, &ko, &r, &err);
    if (krc != KS_OK) {
        rc = fail(krc, &err, NULL);
    } else {
        char was[2 * KS_KCV_LEN + 1], now[2 * KS_KCV_LEN + 1];
        kcv_hex(r.backup_kcv, was);
        kcv_hex(r.kcv, now);
        printf("Restored %s from %s (sealed under check value %s%s); it is now epoch %u under the current key "
               "(check value %s).\n", cfg.keystore, o->file, was, r.from_default ? ", the built-in default key" : "",
               r.epoch, now);
        rc = EXIT_OK;
    }
    ks_mk_result_free(&r);
    ks_config_free(&cfg);
    return rc;
}
