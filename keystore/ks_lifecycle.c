/* p11mk keystore: the master-key lifecycle protocol.
 *
 * Crash and concurrency rules (the reason this file exists):
 *
 *  - One lock, DIR/rotation.lock (flock, exclusive), covers each step's
 *    whole read-modify-write of the key file, the configuration's master_key
 *    and the keystore's rotation state. Under it every step re-reads all
 *    three; nothing is ever written from a copy taken before the lock.
 *  - Write order keeps one invariant at every instant: the key file holds
 *    every key that the keystore's committed state names (CURRENT, and NEW
 *    while staged). Hence: the key file gains NEW (fsynced) before the
 *    keystore stages it; the keystore commits or withdraws NEW before the key
 *    file promotes or retires it. Running applications, which never take the
 *    lock, read the key file (replaced by rename) when the generation moves
 *    and always find the keys they need.
 *  - A crash between the two writes of a step leaves registers one step
 *    behind the keystore. The next step repairs them before anything else,
 *    and repair only moves keys (NEW to CURRENT, NEW or CURRENT to the
 *    history); it never drops one. Keys leave the key file only through
 *    clear-history.
 *  - An error path never rewrites a file the step did not change.
 *  - A step that follows a prompt is given the state the person saw
 *    (opts->expect); after repair it compares, and refuses with KS_ECHANGED,
 *    writing nothing, if the state moved while the person was asked. */
#include "ks_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

struct ks_mk {
    char *dir;      /* keystore directory */
    char *conf;     /* configuration file, NULL for the embedded defaults */
    char *keyfile;  /* master_key path, NULL while the keystore is on the built-in default key */
    unsigned keymode;
    ks_store *st;
    char host[256]; /* this host's name in a fleet (ks_fleet.c) */
    ks_gate_bound gate; /* the writer gate's bound while a step holds its locks (locks_take) */
};

/* What a step works on: everything read afresh under the lock. */
typedef struct {
    ks_mk *m;
    int lockfd;
    void *glock; /* the storage-wide lock when hosts share the storage (global_take) */
    bool have_regs;
    ks_registers regs;
    ks_info info;
} step;

static uint64_t now_unix(void) { return (uint64_t)time(NULL); }

uint64_t ks_auto_due(uint64_t last, uint64_t interval)
{
    return last > UINT64_MAX - interval ? UINT64_MAX : last + interval;
}

/* ---- open ------------------------------------------------------------------ */

static bool is_default(const char *mk) { return !mk || strcmp(mk, "default") == 0; }

void ks_mk_close(ks_mk *m)
{
    if (!m)
        return;
    if (m->st)
        ks_close(m->st);
    free(m->dir);
    free(m->conf);
    free(m->keyfile);
    free(m);
}

int ks_mk_open(const ks_config *cfg, ks_mk **out, ks_err *err)
{
    ks_mk *m;
    ks_mkey mk;
    int rc;

    if (!cfg || !cfg->keystore || !out)
        return KS_EINVAL;
    *out = NULL;
    if (!(m = calloc(1, sizeof(*m))) || !(m->dir = strdup(cfg->keystore)) ||
        !(m->conf = ks_config_home(cfg)) ||
        (!is_default(cfg->master_key) && !(m->keyfile = strdup(cfg->master_key)))) {
        ks_mk_close(m);
        return KS_ENOMEM;
    }
    m->keymode = cfg->key_file_mode ? cfg->key_file_mode : 0600;
    ks_host_name(cfg, m->host, sizeof(m->host));
    if ((rc = ks_mkey_load(cfg, &mk, err)) == KS_OK)
        rc = ks_open_cfg(cfg, &mk, 0, &m->st, err);
    ks_mkey_clear(&mk);
    if (rc != KS_OK) {
        ks_mk_close(m);
        return rc;
    }
    *out = m;
    return KS_OK;
}

ks_store *ks_mk_store(ks_mk *m) { return m ? m->st : NULL; }

/* ---- the lock ---------------------------------------------------------------- */

static void read_holder(int fd, char *holder, size_t n)
{
    ssize_t r = pread(fd, holder, n - 1, 0);
    holder[r > 0 ? r : 0] = '\0';
    holder[strcspn(holder, "\n")] = '\0';
}

int ks_mk_step_running(const char *dir, char *holder, size_t n)
{
    char path[4200], line[256];
    struct stat sb;
    int fd, held = 0;

    if (n)
        holder[0] = '\0';
    snprintf(path, sizeof(path), "%s/rotation.lock", dir);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1; /* made by the first step */
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return -1;
    }
    FILE *f = fopen("/proc/locks", "re");
    if (!f) {
        close(fd);
        return -1;
    }
    /* "1: FLOCK  ADVISORY  WRITE 4711 fd:01:123456 0 EOF"; a waiter's line
     * has "->" after its number. */
    while (!held && fgets(line, sizeof(line), f)) {
        char type[16], rw[16];
        unsigned maj, mnr;
        unsigned long long ino;
        long pid;
        if (sscanf(line, "%*d: %15s %*s %15s %ld %x:%x:%llu", type, rw, &pid, &maj, &mnr, &ino) == 6 &&
            strcmp(type, "FLOCK") == 0 && ino == (unsigned long long)sb.st_ino && maj == major(sb.st_dev) &&
            mnr == minor(sb.st_dev))
            held = 1;
    }
    fclose(f);
    if (held && n > 1)
        read_holder(fd, holder, n);
    close(fd);
    return held;
}

static int lock_take(const char *dir, const ks_mk_opts *o, ks_err *err)
{
    char path[4200], holder[256];
    struct stat sb;
    int fd;

    snprintf(path, sizeof(path), "%s/rotation.lock", dir);
    /* Not following a link planted in the directory; not blocking on a FIFO. */
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0600);
    if (fd < 0) {
        int e = errno;
        ks_err_set(err, "cannot open the lock file %s: %s", path,
                   e == ELOOP ? "it is a symbolic link; remove it" : strerror(e));
        return e == EACCES || e == EPERM || e == EROFS ? KS_EROFS : e == ELOOP ? KS_ECORRUPT : KS_EIO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ks_err_set(err, "the lock file %s is not a regular file; remove it", path);
        close(fd);
        return KS_ECORRUPT;
    }
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool told = false;
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK) {
            ks_err_set(err, "cannot lock %s: %s", path, strerror(errno));
            close(fd);
            return KS_EIO;
        }
        read_holder(fd, holder, sizeof(holder));
        clock_gettime(CLOCK_MONOTONIC, &t);
        uint64_t waited = (uint64_t)(t.tv_sec - t0.tv_sec) * 1000u + (uint64_t)((t.tv_nsec - t0.tv_nsec) / 1000000);
        if (!o || waited >= o->wait_ms) {
            ks_err_set(err, "another rotation step is running on %s (%s); wait for it to finish (or give it "
                            "time with --wait SECONDS), then run this command again", dir,
                       holder[0] ? holder : "holder unknown");
            close(fd);
            return KS_EBUSY;
        }
        if (!told && o->waiting) {
            char what[400];
            snprintf(what, sizeof(what), "another admin command on this keystore to finish (%s)",
                     holder[0] ? holder : "holder unknown");
            o->waiting(what, o->arg);
        }
        told = true;
        struct timespec nap = {0, 50 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    int n = snprintf(holder, sizeof(holder), "pid %ld, %s, since %s\n", (long)getpid(),
                     o && o->command ? o->command : "p11mk", ts);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, holder, (size_t)n, 0) != n) {
        /* The lock holds anyway; only the description for others is missing. */
    }
    return fd;
}

static void lock_release(int fd)
{
    if (fd < 0)
        return;
    if (ftruncate(fd, 0) != 0) {
        /* nothing to do: closing releases the lock */
    }
    close(fd);
}

/* The storage-wide lock, after this host's rotation.lock, when several hosts
 * share the storage: the same waiting rules. KS_OK with *h to give to
 * global_release (NULL when the backend needs none). */
static int global_take(const ks_backend_ops *ops, ks_benv *be, const char *path, const ks_mk_opts *o, void **h,
                       ks_err *err)
{
    char who[128], holder[256], host[64] = "";
    *h = NULL;
    if (!ops->lock_global)
        return KS_OK;
    gethostname(host, sizeof(host) - 1);
    snprintf(who, sizeof(who), "%s on %s, pid %ld", o && o->command ? o->command : "p11mk", host, (long)getpid());
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool told = false;
    for (;;) {
        int rc = ops->lock_global(be, who, h, holder, sizeof(holder));
        if (rc == KS_OK)
            return KS_OK;
        if (rc != KS_EBUSY) {
            ks_err_set(err, "keystore %s: cannot take the rotation lock in its database (%s)", path, holder);
            ops->unlock_global(*h);
            *h = NULL;
            return rc;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        uint64_t waited = (uint64_t)(t.tv_sec - t0.tv_sec) * 1000u + (uint64_t)((t.tv_nsec - t0.tv_nsec) / 1000000);
        if (!o || waited >= o->wait_ms) {
            ks_err_set(err, "another rotation step is running on keystore %s from another host (%s); wait for it "
                            "to finish (or give it time with --wait SECONDS), then run this command again",
                       path, holder);
            ops->unlock_global(*h);
            *h = NULL;
            return KS_EBUSY;
        }
        if (!told && o->waiting) {
            char what[400];
            snprintf(what, sizeof(what), "another admin command on this keystore from another host to finish (%s)", holder);
            o->waiting(what, o->arg);
        }
        told = true;
        struct timespec nap = {0, 100 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
}

static void global_release(const ks_backend_ops *ops, void *h)
{
    if (h)
        ops->unlock_global(h);
}

/* Both locks of a step: this host's, then the storage's. */
static int locks_take(ks_mk *m, const ks_mk_opts *o, int *fd, void **g, ks_err *err)
{
    *g = NULL;
    if ((*fd = lock_take(m->dir, o, err)) < 0)
        return *fd;
    int rc = global_take(m->st->ops, m->st->be, m->st->path, o, g, err);
    if (rc != KS_OK) {
        lock_release(*fd);
        *fd = -1;
    } else if (o) { /* the step's writes wait for an application's no longer than for another step */
        m->gate = (ks_gate_bound){o->wait_ms, o->waiting, o->arg};
        ks_gate_bound_here = &m->gate;
    }
    return rc;
}

static void locks_release(ks_mk *m, int fd, void *g)
{
    if (ks_gate_bound_here == &m->gate)
        ks_gate_bound_here = NULL;
    global_release(m->st->ops, g);
    lock_release(fd);
}

/* ---- reading the state ------------------------------------------------------ */

/* The configuration's master_key, read afresh: another admin may have given
 * the keystore its key file since this process opened it. */
static int refresh_keyfile(ks_mk *m, ks_err *err)
{
    ks_config cfg;
    char a[PATH_MAX], b[PATH_MAX];
    if (access(m->conf, F_OK) != 0)
        return KS_OK; /* no configuration file yet: nothing can have named a key file */
    int rc = ks_config_load_file(&cfg, m->conf, err);
    if (rc != KS_OK)
        return rc;
    if (!is_default(cfg.master_key) && cfg.keystore && realpath(cfg.keystore, a) && realpath(m->dir, b) &&
        strcmp(a, b) == 0 && (!m->keyfile || strcmp(m->keyfile, cfg.master_key) != 0)) {
        char *k = strdup(cfg.master_key);
        if (!k) {
            ks_config_free(&cfg);
            return KS_ENOMEM;
        }
        free(m->keyfile);
        m->keyfile = k;
        m->keymode = cfg.key_file_mode ? cfg.key_file_mode : 0600;
        ks_store_set_keysrc(m->st, m->keyfile, m->keymode);
    }
    ks_config_free(&cfg);
    return KS_OK;
}

static int load_regs(ks_mk *m, ks_registers *r, ks_err *err)
{
    return ks_reg_load(m->keyfile, m->keymode, r, err);
}

/* The epoch the keystore used this key in (*e 0: none); a failed read is
 * the result, never "none" written into the key file's history. */
static int epoch_of(ks_store *st, const uint8_t *key, uint32_t *e)
{
    uint8_t kcv[KS_KCV_LEN];
    ks_key_kcv(key, kcv);
    *e = 0;
    int rc = ks_epoch_of_kcv(st, kcv, e);
    if (rc == KS_ENOTFOUND)
        *e = 0;
    return rc == KS_ENOTFOUND ? KS_OK : rc;
}

/* Bring the registers in line with the keystore, moving keys only. Returns
 * KS_REPAIRED_* flags; KS_ENOKEY (as a negative value) if the keystore's
 * current key is nowhere in the key file. Pure: writes nothing. */
static int repair(ks_store *st, const ks_info *info, ks_registers *r, ks_err *err)
{
    uint64_t now = now_unix();
    unsigned flags = 0;
    uint8_t key[KS_MK_LEN];
    int pos = ks_reg_find(r, info->kcv, key), rc;

    if (pos == KS_REG_NONE) {
        char hex[2 * KS_KCV_LEN + 1];
        ks_kcv_hex(info->kcv, hex);
        ks_err_set(err, "the key file %s does not hold the keystore's current master key (epoch %u, check value "
                        "%s); restore the key file from its backup", r->current.source, info->epoch, hex);
        OPENSSL_cleanse(key, sizeof(key));
        return KS_ENOKEY;
    }
    if (pos >= KS_REG_OLD && ks_reg_max_epoch(r) > info->epoch) {
        /* The keystore is older than the key file: data.mdb was put back
         * from an older copy. Reported, not "repaired" into the old state. */
        char hex[2 * KS_KCV_LEN + 1];
        ks_kcv_hex(info->kcv, hex);
        ks_err_set(err, "the keystore is older than its key file: it is at epoch %u (check value %s), a key the "
                        "key file retired, while the key file has moved on to epoch %u. An older copy of data.mdb "
                        "was put in place. Nothing was changed: put the newer keystore back, or, to go back on "
                        "purpose, restore the copy with 'p11mk-admin restore FILE' (it becomes a new epoch)",
                   info->epoch, hex, ks_reg_max_epoch(r));
        OPENSSL_cleanse(key, sizeof(key));
        return KS_ECORRUPT;
    }
    if (pos != KS_REG_CURRENT) {
        /* The keystore moved on (a commit whose key file update was lost), or
         * the key file was put back from an older copy: the keystore's key
         * becomes CURRENT, the other one heads the history. */
        ks_mkey was = r->current;
        if (pos == KS_REG_NEW) {
            r->has_new = false;
            ks_mkey_clear(&r->staged);
            flags |= KS_MK_REPAIRED_PROMOTED;
        } else {
            ks_reg_remove_old(r, (size_t)(pos - KS_REG_OLD));
            flags |= KS_MK_REPAIRED_REORDERED;
        }
        memcpy(r->current.key, key, KS_MK_LEN);
        r->current.is_default = false;
        uint32_t e;
        if ((rc = epoch_of(st, was.key, &e)) != KS_OK ||
            (rc = ks_reg_insert_old(r, 0, was.key, e, now, false)) != KS_OK) {
            ks_mkey_clear(&was);
            OPENSSL_cleanse(key, sizeof(key));
            return rc;
        }
        ks_mkey_clear(&was);
    }
    if (info->new_epoch) {
        /* Staged: NEW must be the keystore's staged key. */
        int p2 = ks_reg_find(r, info->new_kcv, key);
        if (p2 >= KS_REG_OLD) {
            if (r->has_new && (rc = ks_reg_insert_old(r, 0, r->staged.key, 0, now, true)) != KS_OK)
                goto out;
            p2 = ks_reg_find(r, info->new_kcv, key); /* the insert shifted the history */
            ks_reg_remove_old(r, (size_t)(p2 - KS_REG_OLD));
            memcpy(r->staged.key, key, KS_MK_LEN);
            r->has_new = true;
            flags |= KS_MK_REPAIRED_REORDERED;
        } else if (p2 == KS_REG_NONE && r->has_new) {
            /* NEW is another key than the staged one: it sealed nothing here. */
            if ((rc = ks_reg_insert_old(r, 0, r->staged.key, 0, now, true)) != KS_OK)
                goto out;
            r->has_new = false;
            ks_mkey_clear(&r->staged);
            flags |= KS_MK_REPAIRED_RETIRED;
        }
    } else if (r->has_new) {
        /* Idle, yet the key file holds NEW: a stage that never reached the
         * keystore, or an abort whose key file update was lost. An abort
         * forgets the staged epoch, which was the one after the current:
         * the key is labelled with it, so that 'clear-history --before E'
         * keeps it as long as a backup taken while it was staged may need it
         * (labelled 0, "unknown", it was destroyed by any --before). */
        uint32_t e;
        if ((rc = epoch_of(st, r->staged.key, &e)) != KS_OK)
            goto out;
        if (!e)
            e = info->epoch + 1;
        if ((rc = ks_reg_insert_old(r, 0, r->staged.key, e, now, true)) != KS_OK)
            goto out;
        r->has_new = false;
        ks_mkey_clear(&r->staged);
        flags |= KS_MK_REPAIRED_RETIRED;
    }
    rc = (int)flags;
out:
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

static void history_digest(const ks_registers *r, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_MD *md = EVP_MD_fetch(ks_libctx(), "SHA256", NULL);
    unsigned len = 0;
    memset(out, 0, 32);
    if (c && md && EVP_DigestInit_ex(c, md, NULL)) {
        for (size_t i = 0; r && i < r->n_old; i++) {
            uint8_t be[5];
            ks_be32(be, r->old[i].epoch);
            be[4] = r->old[i].aborted;
            EVP_DigestUpdate(c, r->old[i].kcv, KS_KCV_LEN);
            EVP_DigestUpdate(c, be, sizeof(be));
        }
        EVP_DigestFinal_ex(c, out, &len);
    }
    EVP_MD_free(md);
    EVP_MD_CTX_free(c);
}

static int make_view(const ks_info *info, const ks_registers *r, bool have_regs, ks_mk_view *v)
{
    memset(v, 0, sizeof(*v));
    v->epoch = info->epoch;
    v->rot_state = info->rot_state;
    v->new_epoch = info->new_epoch;
    memcpy(v->kcv, info->kcv, KS_KCV_LEN);
    v->has_new = info->new_epoch != 0;
    if (v->has_new)
        memcpy(v->new_kcv, info->new_kcv, KS_KCV_LEN);
    v->key_file = have_regs;
    v->auto_interval = info->auto_interval;
    v->last_rotation = info->last_rotation;
    v->next_due = info->auto_interval ? ks_auto_due(info->last_rotation, info->auto_interval) : 0;
    history_digest(have_regs ? r : NULL, v->history_digest);
    if (have_regs && r->n_old) {
        if (!(v->history = calloc(r->n_old, sizeof(*v->history))))
            return KS_ENOMEM;
        for (size_t i = 0; i < r->n_old; i++) {
            memcpy(v->history[i].kcv, r->old[i].kcv, KS_KCV_LEN);
            v->history[i].epoch = r->old[i].epoch;
            v->history[i].retired = r->old[i].retired;
            v->history[i].aborted = r->old[i].aborted;
        }
        v->n_history = r->n_old;
    }
    return KS_OK;
}

void ks_mk_view_free(ks_mk_view *v)
{
    if (v) {
        free(v->history);
        v->history = NULL;
        v->n_history = 0;
    }
}

void ks_mk_result_free(ks_mk_result *res)
{
    if (res) {
        free(res->destroyed);
        res->destroyed = NULL;
        res->n_destroyed = 0;
    }
}

static bool same_regs(const ks_registers *a, const ks_registers *b)
{
    uint8_t da[32], db[32];
    if (a->has_new != b->has_new || CRYPTO_memcmp(a->current.key, b->current.key, KS_MK_LEN) ||
        (a->has_new && CRYPTO_memcmp(a->staged.key, b->staged.key, KS_MK_LEN)) || a->n_old != b->n_old)
        return false;
    history_digest(a, da);
    history_digest(b, db);
    return memcmp(da, db, 32) == 0;
}

int ks_mk_view_get(ks_mk *m, ks_mk_view *v, ks_err *err)
{
    ks_registers a, b;
    ks_info info;
    int rc = KS_OK;

    if (!m || !v)
        return KS_EINVAL;
    memset(v, 0, sizeof(*v));
    memset(&a, 0, sizeof(a));
    if ((rc = refresh_keyfile(m, err)) != KS_OK)
        return rc;
    /* Without the lock: read the key file, the keystore, the key file again,
     * until the key file held still across the keystore read. */
    for (int attempt = 0; attempt < 20; attempt++) {
        if (m->keyfile && (rc = load_regs(m, &a, err)) != KS_OK)
            return rc;
        if ((rc = ks_get_info(m->st, &info)) != KS_OK) {
            ks_reg_clear(&a);
            return rc;
        }
        if (!m->keyfile)
            break;
        if ((rc = load_regs(m, &b, err)) != KS_OK) {
            ks_reg_clear(&a);
            return rc;
        }
        bool same = same_regs(&a, &b);
        ks_reg_clear(&b);
        if (same)
            break;
        ks_reg_clear(&a);
        if (attempt == 19) {
            ks_err_set(err, "the key file %s kept changing while it was read; try again", m->keyfile);
            return KS_EBUSY;
        }
    }
    if (m->keyfile) {
        int f = repair(m->st, &info, &a, err);
        if (f < 0) {
            ks_reg_clear(&a);
            return f;
        }
    }
    rc = make_view(&info, &a, m->keyfile != NULL, v);
    ks_reg_clear(&a);
    return rc;
}

/* ---- steps --------------------------------------------------------------------- */

/* What a step killed midway leaves: only holders of the lock write these,
 * so under it they are leftovers (FILE.tmp holds registers: key material). */
static void remove_leftovers(ks_mk *m)
{
    char p[4200];
    if (m->keyfile && snprintf(p, sizeof(p), "%s.tmp", m->keyfile) < (int)sizeof(p))
        (void)unlink(p);
    if (m->conf && snprintf(p, sizeof(p), "%s.tmp", m->conf) < (int)sizeof(p))
        (void)unlink(p);
    ks_remove_scratch(m->dir);
}

static void step_end(step *s)
{
    ks_reg_clear(&s->regs);
    locks_release(s->m, s->lockfd, s->glock);
    s->lockfd = -1;
    s->glock = NULL;
}

static int refresh_info(step *s) { return ks_get_info(s->m->st, &s->info); }

static int save_regs(step *s, ks_err *err) { return ks_reg_save(s->m->keyfile, &s->regs, err); }

static void announce(step *s);

/* A key file serves one keystore, and names it. Two keystores on one key
 * file would lose keys: each step keeps only the keys its own keystore
 * names (the other's CURRENT would be overwritten by a concurrent rotation,
 * or destroyed as "history" by the other's clear-history), and their
 * lifecycle locks are their own. So a step refuses a file naming another
 * keystore, but the one this keystore replaced in its place by a restore
 * (ks_info.succeeds: a copy keeps its own id, to which its records are
 * bound); the file then follows it, on this host and every host of a
 * fleet. A file naming none (written before 2026-12, or a raw key) is
 * bound to the keystore whose step reads it first. *rebound: the
 * registers changed. */
static int own_regs(const ks_info *info, ks_registers *r, const char *keyfile, bool *rebound, ks_err *err)
{
    *rebound = false;
    if (r->has_owner && CRYPTO_memcmp(r->owner, info->keystore_id, sizeof(r->owner)) == 0)
        return KS_OK;
    /* A predecessor's file follows only if it holds the key this keystore
     * is sealed under as CURRENT or NEW (where the restore resealed it, or
     * a fleet host one commit behind): a list can name a keystore that
     * still lives elsewhere, whose file holds its own keys. */
    if (r->has_owner && !(ks_info_succeeds(info, r->owner) && ks_reg_holds_current(r, info->kcv))) {
        char mine[2 * KS_KCV_LEN + 1], theirs[2 * KS_KCV_LEN + 1];
        ks_kcv_hex(info->keystore_id, mine);
        ks_kcv_hex(r->owner, theirs);
        ks_err_set(err, "the key file %s belongs to another keystore (id %s..., this one is %s...): two keystores "
                        "on one key file would overwrite or destroy each other's master keys, so nothing was "
                        "changed. Name this keystore's own key file in its configuration (master_key)", keyfile,
                   theirs, mine);
        return KS_EPERM;
    }
    memcpy(r->owner, info->keystore_id, sizeof(r->owner));
    r->has_owner = true;
    *rebound = true;
    return KS_OK;
}

static int step_begin(ks_mk *m, const ks_mk_opts *o, step *s, ks_mk_result *res, ks_err *err)
{
    int rc;
    memset(s, 0, sizeof(*s));
    s->m = m;
    s->lockfd = -1;
    if (res) {
        memset(res, 0, sizeof(*res));
    }
    if ((rc = locks_take(m, o, &s->lockfd, &s->glock, err)) != KS_OK)
        return rc;
    remove_leftovers(m);
    if ((rc = refresh_keyfile(m, err)) != KS_OK || (m->keyfile && (rc = load_regs(m, &s->regs, err)) != KS_OK) ||
        (rc = refresh_info(s)) != KS_OK) {
        step_end(s);
        return rc;
    }
    s->have_regs = m->keyfile != NULL;
    if (s->have_regs) {
        bool rebound = false;
        if ((rc = own_regs(&s->info, &s->regs, m->keyfile, &rebound, err)) != KS_OK) {
            step_end(s);
            return ks_err_in(err, KS_AREA_KEY, rc);
        }
        s->regs.has_made_for = false; /* a file in use: the next save drops an adoption's place */
        int flags = repair(m->st, &s->info, &s->regs, err);
        if (flags < 0) {
            step_end(s);
            return flags;
        }
        if ((flags || rebound) && (rc = save_regs(s, err)) != KS_OK) {
            /* A binding alone is not needed by this step (a read-only key
             * file, say): the next save writes it. A repair is. */
            if (flags) {
                step_end(s);
                return rc;
            }
            ks_log(KS_LOG_INFO, "keystore %s: the key file %s could not be made to name it (%s); a later step will",
                   m->dir, m->keyfile, err->msg);
            err->msg[0] = '\0';
        }
        if (res)
            res->repaired = (unsigned)flags;
        announce(s);
        if (flags)
            ks_log(KS_LOG_INFO, "keystore %s: the key file %s was one step behind the keystore (a step was "
                   "interrupted); repaired", m->dir, m->keyfile);
    }
    return KS_OK;
}

/* The state a person confirmed must still hold. */
static int check_expect(step *s, const ks_mk_opts *o, ks_err *err)
{
    const ks_mk_view *e = o ? o->expect : NULL;
    ks_mk_view now;
    char what[512] = "";
    int rc;

    if (!e)
        return KS_OK;
    if ((rc = make_view(&s->info, &s->regs, s->have_regs, &now)) != KS_OK)
        return rc;
    if (now.epoch != e->epoch || CRYPTO_memcmp(now.kcv, e->kcv, KS_KCV_LEN))
        snprintf(what, sizeof(what), "the current master key changed (epoch %u -> %u)", e->epoch, now.epoch);
    else if (now.rot_state != e->rot_state || now.new_epoch != e->new_epoch || now.has_new != e->has_new ||
             (now.has_new && CRYPTO_memcmp(now.new_kcv, e->new_kcv, KS_KCV_LEN)))
        snprintf(what, sizeof(what), "the rotation state changed (%s -> %s)", ks_rot_state_name(e->rot_state),
                 ks_rot_state_name(now.rot_state));
    else if (now.n_history != e->n_history || memcmp(now.history_digest, e->history_digest, 32))
        snprintf(what, sizeof(what), "the history of retired keys changed (%zu -> %zu keys)", e->n_history,
                 now.n_history);
    else if (now.auto_interval != e->auto_interval)
        snprintf(what, sizeof(what), "automatic rotation was turned %s", now.auto_interval ? "on" : "off");
    ks_mk_view_free(&now);
    if (!what[0])
        return KS_OK;
    ks_err_set(err, "the master-key state changed while you were asked: %s (another command or the "
                    "auto-update timer ran meanwhile). Nothing was written; look at 'p11mk-admin status' and run "
                    "the command again", what);
    return KS_ECHANGED;
}

/* A keystore's place, for a key file an adoption makes: the first 16 bytes
 * of SHA-256 of its directory's real path. */
static bool place_of(const char *dir, uint8_t out[16])
{
    char real[PATH_MAX];
    uint8_t md[32];
    size_t n = 0;
    if (!realpath(dir, real) ||
        !EVP_Q_digest(ks_libctx(), "SHA256", NULL, real, strlen(real), md, &n))
        return false;
    memcpy(out, md, 16);
    return true;
}

/* What a killed adoption left: keyfile.new.PID of a process that is gone
 * (ks_reg_create; it holds only the public default key and an id). */
static void remove_dead_adoptions(const char *keyfile)
{
    char dir[4096], path[4400];
    const char *slash = strrchr(keyfile, '/'), *base = slash ? slash + 1 : keyfile;
    size_t blen = strlen(base);

    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - keyfile) : 1, slash ? keyfile : ".");
    DIR *d = opendir(dir[0] ? dir : "/");
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        char *end;
        if (strncmp(e->d_name, base, blen) != 0 || strncmp(e->d_name + blen, ".new.", 5) != 0)
            continue;
        long pid = strtol(e->d_name + blen + 5, &end, 10);
        if (*end || pid <= 0 || pid > INT_MAX || (kill((pid_t)pid, 0) == 0 || errno != ESRCH))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir[0] ? dir : "", e->d_name);
        (void)unlink(path);
    }
    closedir(d);
}

/* A keystore still on the built-in default key gets a key file before its
 * first stage: the registers need a home. */
static int adopt_keyfile(step *s, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    ks_mk *m = s->m;
    char keyfile[4096], *conf = NULL;
    int rc;

    if (m->keyfile)
        return KS_OK;
    if (!(conf = strdup(m->conf)))
        return KS_ENOMEM;
    if (o && o->key_file) {
        snprintf(keyfile, sizeof(keyfile), "%s", o->key_file);
    } else {
        const char *slash = strrchr(conf, '/');
        snprintf(keyfile, sizeof(keyfile), "%.*s/master.key", slash ? (int)(slash - conf) : 1, slash ? conf : ".");
    }
    struct stat sb;
    remove_dead_adoptions(keyfile);
    if (lstat(keyfile, &sb) != 0) {
        /* A new file, made only where none is (another keystore's adoption
         * may be making the same one), naming this keystore. */
        (void)ks_mkdir_p(keyfile, false); /* its directory, 0700 */
        ks_registers r;
        memset(&r, 0, sizeof(r));
        ks_mkey_default(&r.current); /* public: writing it down costs nothing */
        memcpy(r.owner, s->info.keystore_id, sizeof(r.owner));
        r.has_owner = true;
        r.has_made_for = place_of(m->dir, r.made_for);
        rc = ks_reg_create(keyfile, &r, err);
        ks_reg_clear(&r);
        if (rc != KS_OK && rc != KS_EEXIST) {
            free(conf);
            return rc;
        }
    }
    {
        /* Only this keystore's new file: made just now, or by an adoption
         * of this keystore, in this place, interrupted before its first
         * stage (it names this keystore and this place, and holds the
         * default key alone). Not a file naming no keystore (another
         * adoption may be binding it at this moment), nor one holding keys,
         * nor one made for another place: a copy of this keystore restored
         * elsewhere has this keystore's id, and the original's
         * configuration may name that file already. */
        ks_registers r;
        rc = ks_reg_load(keyfile, m->keymode, &r, err);
        uint8_t here[16];
        bool leftover = rc == KS_OK && r.has_owner &&
                        CRYPTO_memcmp(r.owner, s->info.keystore_id, sizeof(r.owner)) == 0 && r.current.is_default &&
                        !r.has_new && r.n_old == 0;
        bool ours = leftover && r.has_made_for && place_of(m->dir, here) &&
                    CRYPTO_memcmp(r.made_for, here, sizeof(here)) == 0;
        ks_reg_clear(&r);
        if (leftover && !ours) {
            ks_err_set(err, "%s was left by an interrupted adoption of this keystore's id in another directory (a "
                            "copy of it, or this keystore before it moved); it holds only the built-in default "
                            "key: if no configuration names it, delete it and run the command again; nothing was "
                            "changed", keyfile);
            free(conf);
            return ks_err_in(err, KS_AREA_KEY, KS_EEXIST);
        }
        if (!ours) {
            ks_err_set(err, "%s already exists and is not a new key file of this keystore (another keystore's, "
                            "or one holding keys); nothing was changed: name a new file with --key-file (a file "
                            "that holds only the built-in default key may be deleted)", keyfile);
            free(conf);
            return ks_err_in(err, KS_AREA_KEY, KS_EEXIST);
        }
    }
    if ((rc = ks_config_write_master_key(conf, keyfile, m->dir, err)) != KS_OK) {
        free(conf);
        return rc; /* the key file stays: the next attempt adopts it */
    }
    free(m->keyfile);
    free(m->conf);
    m->keyfile = strdup(keyfile);
    m->conf = conf;
    if (!m->keyfile)
        return KS_ENOMEM;
    ks_store_set_keysrc(m->st, m->keyfile, m->keymode);
    if (res) {
        snprintf(res->key_file, sizeof(res->key_file), "%s", keyfile);
        snprintf(res->config, sizeof(res->config), "%s", conf);
    }
    if ((rc = load_regs(m, &s->regs, err)) != KS_OK)
        return rc;
    s->have_regs = true;
    s->regs.has_made_for = false; /* adopted: the stage's save drops the place */
    bool rebound = false;
    if ((rc = own_regs(&s->info, &s->regs, m->keyfile, &rebound, err)) != KS_OK)
        return ks_err_in(err, KS_AREA_KEY, rc);
    int flags = repair(m->st, &s->info, &s->regs, err);
    if (flags < 0)
        return flags;
    return flags || rebound ? save_regs(s, err) : KS_OK;
}

static void fill_result(step *s, ks_mk_result *res)
{
    if (!res)
        return;
    res->epoch = s->info.epoch;
    res->new_epoch = s->info.new_epoch;
    memcpy(res->kcv, s->info.kcv, KS_KCV_LEN);
    if (s->info.new_epoch)
        memcpy(res->new_kcv, s->info.new_kcv, KS_KCV_LEN);
    res->auto_interval = s->info.auto_interval;
    res->next_due = s->info.auto_interval ? ks_auto_due(s->info.last_rotation, s->info.auto_interval) : 0;
}

/* The state after a step, re-read, into the result. */
/* This host's keys as its key file now holds them, for the other hosts. */
static void announce(step *s)
{
    ks_mkey d;
    if (!ks_fleet_shared(s->m->st))
        return;
    if (!s->have_regs) {
        const ks_mkey *k[1] = {&d};
        ks_mkey_default(&d);
        (void)ks_fleet_announce(s->m->st, s->m->host, k, 1);
        ks_mkey_clear(&d);
        return;
    }
    const ks_mkey *k[2] = {&s->regs.current, &s->regs.staged};
    (void)ks_fleet_announce(s->m->st, s->m->host, k, s->regs.has_new ? 2 : 1);
}

/* Hosts of the fleet that have not proven NEW, named in a sentence; 0 when
 * every host holds it. */
static size_t fleet_missing(step *s, char *names, size_t n, int *rc)
{
    ks_host *h = NULL;
    size_t nh = 0, missing = 0, used = 0;
    names[0] = '\0';
    *rc = KS_OK;
    if (!ks_fleet_shared(s->m->st) || !s->have_regs || !s->regs.has_new)
        return 0;
    if ((*rc = ks_fleet_list(s->m->st, &s->regs.current, &s->regs.staged, &h, &nh)) != KS_OK)
        return 0;
    for (size_t i = 0; i < nh; i++) {
        if (h[i].has_new)
            continue;
        char when[32] = "never";
        if (h[i].seen) {
            time_t t = (time_t)h[i].seen;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
        }
        int w = snprintf(names + used, n - used, "%s%s (last contact %s)", missing ? ", " : "", h[i].name, when);
        if (w > 0 && (size_t)w < n - used)
            used += (size_t)w;
        missing++;
    }
    free(h);
    return missing;
}

/* Rewrap and commit: every host of the fleet must hold NEW first (records
 * under NEW are unreadable to a host without it). */
static int fleet_check(step *s, const char *what, ks_err *err)
{
    char names[700], hex[2 * KS_KCV_LEN + 1];
    int rc;
    size_t missing = fleet_missing(s, names, sizeof(names), &rc);
    if (rc != KS_OK) {
        ks_err_set(err, "cannot read which hosts share keystore %s: %s; nothing was changed", s->m->dir,
                   ks_strerror(rc));
        return rc;
    }
    if (!missing)
        return KS_OK;
    ks_kcv_hex(s->info.new_kcv, hex);
    ks_err_set(err, "cannot %s yet: %zu host%s sharing this keystore %s not loaded the new master key (epoch %u, "
                    "check value %s): %s. On each, load the same key with 'p11mk-admin stage' (--parts N or "
                    "--passphrase-file FILE); a host that left for good is taken out with 'p11mk-admin "
                    "host-remove NAME'. Then run this command again (nothing was changed)", what, missing,
               missing == 1 ? "" : "s", missing == 1 ? "has" : "have", s->info.new_epoch, hex, names);
    return KS_ESTATE;
}

/* A stage that waited for the fleet (KS_ROT_PENDING) becomes STAGED once
 * every host has proven NEW: from then on new records are sealed under it. */
static int complete_stage(step *s, ks_err *err)
{
    char names[700];
    int rc;
    if (s->info.rot_state != KS_ROT_PENDING)
        return KS_OK;
    size_t missing = fleet_missing(s, names, sizeof(names), &rc);
    if (rc != KS_OK || missing)
        return rc;
    if ((rc = ks_rot_activate(s->m->st, NULL)) != KS_OK) {
        ks_err_set(err, "cannot mark the staged key as held by every host: %s", ks_strerror(rc));
        return rc;
    }
    return refresh_info(s);
}

static int finish(step *s, ks_mk_result *res)
{
    announce(s);
    int rc = refresh_info(s);
    if (rc == KS_OK)
        fill_result(s, res);
    return rc;
}

/* NEW must be in the key file for rewrap and commit. */
static int need_new(step *s, ks_err *err)
{
    uint8_t k[KS_KCV_LEN];
    char hex[2 * KS_KCV_LEN + 1];
    if (s->have_regs && s->regs.has_new) {
        ks_mkey_kcv(&s->regs.staged, k);
        if (CRYPTO_memcmp(k, s->info.new_kcv, KS_KCV_LEN) == 0)
            return KS_OK;
    }
    if (!s->have_regs) /* staged in this process (a scratch copy): the store holds it */
        return KS_OK;
    ks_kcv_hex(s->info.new_kcv, hex);
    ks_err_set(err, "the staged master key (epoch %u, check value %s) is not in the key file %s; restore the key "
                    "file that holds it, or withdraw it with 'p11mk-admin abort'", s->info.new_epoch, hex,
               s->m->keyfile);
    return KS_ENOKEY;
}

/* Another host staged this key in the shared keystore: this host's key file
 * gains it as NEW (fsynced), and the fleet learns that this host holds it. */
static int join_stage(step *s, const ks_mkey *key, ks_mk_result *res, ks_err *err)
{
    int rc;
    if (s->regs.has_new) {
        uint8_t have[KS_KCV_LEN];
        ks_mkey_kcv(&s->regs.staged, have);
        if (CRYPTO_memcmp(have, s->info.new_kcv, KS_KCV_LEN) == 0)
        {
            announce(s); /* already here: announced again */
            if ((rc = refresh_info(s)) != KS_OK || (rc = complete_stage(s, err)) != KS_OK)
                return rc;
            return finish(s, res);
        }
    }
    int pos = ks_reg_find(&s->regs, s->info.new_kcv, NULL);
    if (pos >= KS_REG_OLD)
        ks_reg_remove_old(&s->regs, (size_t)(pos - KS_REG_OLD));
    if (s->regs.has_new) /* another key this keystore does not use: kept in the history */
        if ((rc = ks_reg_insert_old(&s->regs, 0, s->regs.staged.key, 0, now_unix(), true)) != KS_OK)
            return rc;
    s->regs.has_new = true;
    s->regs.staged = *key;
    snprintf(s->regs.staged.source, sizeof(s->regs.staged.source), "%s", s->m->keyfile);
    s->regs.staged.file_mode = s->m->keymode;
    if ((rc = save_regs(s, err)) != KS_OK)
        return rc;
    ks_log(KS_LOG_INFO, "keystore %s: host %s now holds the staged master key of epoch %u", s->m->dir, s->m->host,
           s->info.new_epoch);
    if (res)
        res->joined = true;
    announce(s);
    if ((rc = refresh_info(s)) != KS_OK || (rc = complete_stage(s, err)) != KS_OK)
        return rc;
    return finish(s, res);
}

static int do_stage(step *s, const ks_mkey *key, ks_mk_result *res, ks_err *err)
{
    uint8_t kcv[KS_KCV_LEN];
    int rc;

    ks_mkey_kcv(key, kcv);
    if (s->info.rot_state != KS_ROT_IDLE && ks_fleet_shared(s->m->st) && s->have_regs &&
        CRYPTO_memcmp(kcv, s->info.new_kcv, KS_KCV_LEN) == 0)
        return join_stage(s, key, res, err);
    if (s->info.rot_state != KS_ROT_IDLE) {
        ks_err_set(err, "a new master key is already staged (epoch %u, %s): finish with 'p11mk-admin rewrap' and "
                        "'p11mk-admin commit', or withdraw it with 'p11mk-admin abort'", s->info.new_epoch,
                   ks_rot_state_name(s->info.rot_state));
        return KS_ESTATE;
    }
    if (CRYPTO_memcmp(kcv, s->info.kcv, KS_KCV_LEN) == 0) {
        ks_err_set(err, "the new master key is the current one; nothing to stage");
        return KS_ESTATE;
    }
    /* Damage is reported, not acted on: on pages its engine could not have
     * written, a rotation stops, and so does its abort (staged, neither
     * could finish until a restore; a hostile review, 2026-12-02). */
    char why[512];
    if (ks_check_pages(s->m->st, why, sizeof(why)) == KS_ECORRUPT) {
        ks_err_set(err, "keystore %s is damaged (%s); nothing was staged, since a rotation would not finish on "
                        "it: run 'p11mk-admin verify', then restore the last good backup", s->m->dir, why);
        return KS_ECORRUPT;
    }
    /* A key of the history may come back (a passphrase used before): it
     * moves from the history to NEW. */
    int pos = ks_reg_find(&s->regs, kcv, NULL);
    if (pos >= KS_REG_OLD)
        ks_reg_remove_old(&s->regs, (size_t)(pos - KS_REG_OLD));
    s->regs.has_new = true;
    s->regs.staged = *key;
    snprintf(s->regs.staged.source, sizeof(s->regs.staged.source), "%s", s->m->keyfile);
    s->regs.staged.file_mode = s->m->keymode;
    if ((rc = save_regs(s, err)) != KS_OK)
        return rc; /* the key file is as it was; the keystore was not touched */
    rc = ks_rot_stage(s->m->st, key, 0, err);
    if (rc != KS_OK) {
        /* The keystore may or may not have taken it: settle it as a crash
         * would be settled, from what the keystore says now. */
        ks_err e2 = KS_ERR_INIT;
        if (refresh_info(s) != KS_OK)
            return rc; /* the next step repairs it */
        if (!s->info.new_epoch || CRYPTO_memcmp(s->info.new_kcv, kcv, KS_KCV_LEN) != 0) {
            int f = repair(s->m->st, &s->info, &s->regs, &e2); /* NEW moves to the history */
            if (f > 0)
                (void)save_regs(s, &e2);
            return rc;
        }
    }
    announce(s);
    if ((rc = refresh_info(s)) != KS_OK || (rc = complete_stage(s, err)) != KS_OK)
        return rc;
    return finish(s, res);
}

static int do_rewrap(step *s, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    uint64_t done = 0;
    bool stopped = false;
    int rc;

    if (s->info.rot_state == KS_ROT_IDLE) {
        ks_err_set(err, "no new master key is staged; stage one first with 'p11mk-admin stage'");
        return KS_ESTATE;
    }
    if (s->info.rot_state == KS_ROT_ABORTING) {
        ks_err_set(err, "the rotation is being aborted; run 'p11mk-admin abort' to finish that first");
        return KS_ESTATE;
    }
    if ((rc = need_new(s, err)) != KS_OK || (rc = fleet_check(s, "rewrap", err)) != KS_OK ||
        (rc = complete_stage(s, err)) != KS_OK)
        return rc;
    rc = ks_rot_rewrap(s->m->st, o ? o->batch : 0, o ? o->progress : NULL, o ? o->arg : NULL, &done, &stopped, err);
    if (res) {
        res->resealed += done;
        res->stopped = stopped;
    }
    return rc == KS_OK ? finish(s, res) : rc;
}

static int do_commit(step *s, bool disable_auto, uint64_t now, ks_mk_result *res, ks_err *err)
{
    uint32_t old_epoch = s->info.epoch;
    int rc;

    if (s->info.rot_state == KS_ROT_IDLE) {
        if (res && (res->repaired & KS_MK_REPAIRED_PROMOTED)) {
            fill_result(s, res); /* the interrupted commit is complete now */
            return KS_OK;
        }
        ks_err_set(err, "no new master key is staged; nothing to commit");
        return KS_ESTATE;
    }
    if (s->info.rot_state == KS_ROT_ABORTING) {
        ks_err_set(err, "the rotation is being aborted; finish with 'p11mk-admin abort'");
        return KS_ESTATE;
    }
    if ((rc = need_new(s, err)) != KS_OK || (rc = fleet_check(s, "commit", err)) != KS_OK)
        return rc;
    if ((rc = ks_rot_commit(s->m->st, disable_auto, now, err)) != KS_OK)
        return rc;
    if (res)
        res->auto_disabled = disable_auto && s->info.auto_interval;
    if (s->have_regs) {
        ks_mkey was = s->regs.current;
        s->regs.current = s->regs.staged;
        s->regs.has_new = false;
        ks_mkey_clear(&s->regs.staged);
        rc = ks_reg_insert_old(&s->regs, 0, was.key, old_epoch, now_unix(), false);
        ks_mkey_clear(&was);
        if (rc == KS_OK)
            rc = save_regs(s, err);
        if (rc != KS_OK) {
            char why[sizeof(err->msg)];
            snprintf(why, sizeof(why), "%s", err->msg[0] ? err->msg : ks_strerror(rc));
            ks_err_set(err, "the keystore is committed, but the key file could not be updated (%s); the keystore "
                            "opens with the key file as it is, and the next step repairs it: run 'p11mk-admin "
                            "commit' again", why);
            return rc;
        }
    }
    return finish(s, res);
}

static int do_abort(step *s, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    uint32_t nxt = s->info.new_epoch;
    uint8_t nkcv[KS_KCV_LEN];
    uint64_t done = 0;
    int rc;

    if (s->info.rot_state == KS_ROT_IDLE) {
        if (res && (res->repaired & KS_MK_REPAIRED_RETIRED)) {
            fill_result(s, res); /* the interrupted abort is complete now */
            return KS_OK;
        }
        ks_err_set(err, "no rotation is under way; nothing to abort");
        return KS_ESTATE;
    }
    memcpy(nkcv, s->info.new_kcv, KS_KCV_LEN);
    rc = ks_rot_abort(s->m->st, o ? o->batch : 0, o ? o->progress : NULL, o ? o->arg : NULL, &done, err);
    if (res)
        res->resealed += done;
    if (rc != KS_OK)
        return rc;
    if (s->have_regs && s->regs.has_new) {
        /* NEW sealed records while it was staged; a backup taken then needs
         * it. It goes to the history, not away. */
        uint8_t k[KS_KCV_LEN];
        ks_mkey_kcv(&s->regs.staged, k);
        rc = ks_reg_insert_old(&s->regs, 0, s->regs.staged.key, CRYPTO_memcmp(k, nkcv, KS_KCV_LEN) ? 0 : nxt,
                               now_unix(), true);
        s->regs.has_new = false;
        ks_mkey_clear(&s->regs.staged);
        if (rc == KS_OK)
            rc = save_regs(s, err);
        if (rc != KS_OK) {
            char why[sizeof(err->msg)];
            snprintf(why, sizeof(why), "%s", err->msg[0] ? err->msg : ks_strerror(rc));
            ks_err_set(err, "the keystore is back under the current key, but the key file could not be updated "
                            "(%s); run 'p11mk-admin abort' again to repair it", why);
            return rc;
        }
    }
    return finish(s, res);
}

/* stage + rewrap + commit, the lock held throughout. */
static int do_rotate(step *s, const ks_mkey *key, unsigned flags, uint64_t now, const ks_mk_opts *o,
                     ks_mk_result *res, ks_err *err)
{
    ks_mkey gen;
    int rc;

    if (s->info.rot_state != KS_ROT_IDLE) {
        ks_err_set(err, "a rotation is already under way (%s, epoch %u staged): %s",
                   ks_rot_state_name(s->info.rot_state), s->info.new_epoch, ks_rot_busy_advice(s->info.rot_state));
        return KS_ESTATE;
    }
    if (!key && ks_fleet_shared(s->m->st)) {
        ks_host *h = NULL;
        size_t nh = 0, others = 0;
        if ((rc = ks_fleet_list(s->m->st, NULL, NULL, &h, &nh)) != KS_OK)
            return rc;
        for (size_t i = 0; i < nh; i++)
            others += strcmp(h[i].name, s->m->host) != 0;
        free(h);
        if (others) {
            ks_err_set(err, "this keystore is shared by %zu other host%s, which cannot load a generated key: "
                            "stage a key entered on every host instead ('p11mk-admin set-master-key --parts N' or "
                            "'--passphrase-file FILE' here, 'p11mk-admin stage' with the same key on the others), "
                            "then rewrap and commit (nothing was changed)", others, others == 1 ? "" : "s");
            return KS_ESTATE;
        }
    }
    if (!key) {
        if (ks_mkey_generate(&gen) != KS_OK) {
            ks_err_set(err, "the random generator failed; nothing was changed");
            return KS_EIO;
        }
        key = &gen;
    }
    if ((rc = adopt_keyfile(s, o, res, err)) == KS_OK && (rc = do_stage(s, key, res, err)) == KS_OK) {
        uint8_t staged[KS_KCV_LEN];
        memcpy(staged, s->info.new_kcv, KS_KCV_LEN);
        if ((rc = do_rewrap(s, o, res, err)) == KS_OK && !(res && res->stopped))
            rc = do_commit(s, (flags & KS_MK_MANUAL) != 0, now, res, err);
        if (res)
            memcpy(res->new_kcv, staged, KS_KCV_LEN);
    }
    if (key == &gen)
        ks_mkey_clear(&gen);
    return rc;
}

#define STEP(m, o, res, err, body)                                                                                 \
    do {                                                                                                           \
        step s_;                                                                                                   \
        int rc_;                                                                                                   \
        if (!(m))                                                                                                  \
            return KS_EINVAL;                                                                                      \
        if ((rc_ = step_begin((m), (o), &s_, (res), (err))) != KS_OK)                                              \
            return rc_;                                                                                            \
        if ((rc_ = check_expect(&s_, (o), (err))) == KS_OK)                                                        \
            rc_ = (body);                                                                                          \
        step_end(&s_);                                                                                             \
        return rc_;                                                                                                \
    } while (0)

int ks_mk_stage(ks_mk *m, const ks_mkey *key, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    if (!key)
        return KS_EINVAL;
    STEP(m, o, res, err, adopt_keyfile(&s_, o, res, err) ?: do_stage(&s_, key, res, err));
}

int ks_mk_rewrap(ks_mk *m, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    STEP(m, o, res, err, do_rewrap(&s_, o, res, err));
}

int ks_mk_commit(ks_mk *m, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    STEP(m, o, res, err, do_commit(&s_, false, 0, res, err));
}

int ks_mk_abort(ks_mk *m, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    STEP(m, o, res, err, do_abort(&s_, o, res, err));
}

int ks_mk_rotate(ks_mk *m, const ks_mkey *key, unsigned flags, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    STEP(m, o, res, err, do_rotate(&s_, key, flags, 0, o, res, err));
}

static int do_clear(step *s, size_t keep, uint32_t before, ks_mk_result *res, ks_err *err)
{
    size_t n = 0;
    int rc;

    if (!s->have_regs || s->regs.n_old <= keep)
        return KS_OK;
    ks_histinfo *gone = calloc(s->regs.n_old - keep, sizeof(*gone));
    if (!gone)
        return KS_ENOMEM;
    for (size_t i = s->regs.n_old; i-- > keep;) {
        ks_histkey *h = &s->regs.old[i];
        if (before && (h->epoch >= before || h->epoch == 0))
            continue; /* not known to be below the epoch asked (0: a version 1 file's, unknown) */
        /* Never a key the keystore names (repair keeps them out of the history). */
        if (!CRYPTO_memcmp(h->kcv, s->info.kcv, KS_KCV_LEN) ||
            (s->info.new_epoch && !CRYPTO_memcmp(h->kcv, s->info.new_kcv, KS_KCV_LEN)))
            continue;
        memcpy(gone[n].kcv, h->kcv, KS_KCV_LEN);
        gone[n].epoch = h->epoch;
        gone[n].retired = h->retired;
        gone[n].aborted = h->aborted;
        n++;
        ks_reg_remove_old(&s->regs, i);
    }
    if (n && (rc = save_regs(s, err)) != KS_OK) {
        free(gone);
        return rc;
    }
    if (res) {
        res->destroyed = gone;
        res->n_destroyed = n;
    } else {
        free(gone);
    }
    if (n)
        ks_log(KS_LOG_INFO, "keystore %s: %zu retired master key(s) destroyed", s->m->dir, n);
    return KS_OK;
}

int ks_mk_clear_history(ks_mk *m, size_t keep, uint32_t before, const ks_mk_opts *o, ks_mk_result *res,
                        ks_err *err)
{
    STEP(m, o, res, err, do_clear(&s_, keep, before, res, err));
}

static int do_set_auto(step *s, uint64_t interval, ks_mk_result *res, ks_err *err)
{
    int rc = ks_rot_set_auto(s->m->st, interval);
    if (rc != KS_OK) {
        ks_err_set(err, "cannot store the automatic rotation setting: %s", ks_strerror(rc));
        return rc;
    }
    return finish(s, res);
}

int ks_mk_set_auto(ks_mk *m, uint64_t interval, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    if (interval && (interval < KS_AUTO_MIN || interval > KS_AUTO_MAX)) {
        ks_err_set(err, "the automatic rotation interval must be between 1 hour and 3650 days (10 years)");
        return KS_EINVAL;
    }
    STEP(m, o, res, err, do_set_auto(&s_, interval, res, err));
}

static int do_auto_run(step *s, uint64_t now, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    int rc;
    if (s->info.rot_state == KS_ROT_ABORTING) {
        if ((rc = do_abort(s, o, res, err)) != KS_OK)
            return rc;
        if (res)
            res->finished = true;
    } else if (s->info.rot_state != KS_ROT_IDLE) {
        if ((rc = do_rewrap(s, o, res, err)) != KS_OK || (res && res->stopped) ||
            (rc = do_commit(s, false, now, res, err)) != KS_OK)
            return rc;
        if (res)
            res->finished = true;
    }
    if (s->info.auto_interval && now >= ks_auto_due(s->info.last_rotation, s->info.auto_interval)) {
        /* The rotation is stamped with the clock that found it due. */
        if ((rc = do_rotate(s, NULL, 0, now, o, res, err)) != KS_OK)
            return rc;
        if (res)
            res->rotated = true;
    }
    fill_result(s, res);
    return KS_OK;
}

int ks_mk_auto_run(ks_mk *m, uint64_t now, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    STEP(m, o, res, err, do_auto_run(&s_, now, o, res, err));
}

/* ---- copies ------------------------------------------------------------------ */

/* A keystore whose storage is not in its directory (a database several
 * hosts share) is restored online: the copy, made ready in a scratch
 * directory, replaces the storage's content in one write transaction, with
 * a later generation than anything running has seen. */
static int restore_shared(const ks_config *cfg, const ks_backend_ops *ops, const char *file, const ks_registers *regs,
                          const ks_mkey *cur, ks_restore_gate gate, void *arg, const ks_mk_opts *o, ks_mk_result *res,
                          ks_err *err)
{
    ks_benv *be = NULL;
    bool rdonly = false, tables = false;
    void *g = NULL;
    int rc;
    if ((rc = ops->check_location(cfg->keystore, err)) != KS_OK)
        return rc;
    if ((rc = ops->open(cfg->keystore, cfg->postgresql, KS_OPEN_NO_THREADS, &rdonly, &tables, &be, err)) != KS_OK)
        return rc;
    if ((rc = global_take(ops, be, cfg->keystore, o, &g, err)) == KS_OK) {
        rc = ks_restore_shared_locked(cfg->keystore, ops, be, tables, file, regs, cur, gate, arg, res, err);
        global_release(ops, g);
    }
    ops->close(be);
    return rc;
}

int ks_keyfile_claim(const char *path, unsigned mode, ks_store *st, ks_err *err)
{
    ks_registers r;
    ks_info info;
    int rc = ks_get_info(st, &info);
    if (rc != KS_OK)
        return rc;
    if ((rc = ks_reg_load(path, mode, &r, err)) == KS_OK) {
        bool rebound = false;
        if ((rc = own_regs(&info, &r, path, &rebound, err)) == KS_OK && rebound)
            rc = ks_reg_save(path, &r, err);
    }
    ks_reg_clear(&r);
    return ks_err_in(err, KS_AREA_KEY, rc);
}

/* The key file a restore puts a copy under, checked under the lock before
 * the copy replaces anything (ks_restore_gate): a key file serves one
 * keystore (own_regs). It may name nobody (the first step binds it), the
 * copy (a backup of this keystore), or the keystore the copy replaces (the
 * copy says so: ks_set_succeeds, and the file follows it). A file naming
 * another keystore is refused: a restore into a new directory would give
 * that keystore's key file to the copy, whose clear-history would then
 * destroy that keystore's keys. Nothing is written before the swap. */
static int restore_gate(const ks_peek_ids *live, const uint8_t copy_ksid[16], void *arg, ks_err *err)
{
    const ks_registers *r = ((void **)arg)[0];
    const ks_config *cfg = ((void **)arg)[1];

    if (!r || !r->has_owner || CRYPTO_memcmp(r->owner, copy_ksid, sizeof(r->owner)) == 0 ||
        (live->have_ksid && CRYPTO_memcmp(r->owner, live->ksid, sizeof(r->owner)) == 0))
        return KS_OK;
    /* A file still naming one the live keystore replaced, holding the key
     * the live keystore is sealed under (own_regs). */
    for (size_t i = 0; live->have_kcv && i < live->n_succeeds; i++)
        if (CRYPTO_memcmp(r->owner, live->succeeds[i], sizeof(r->owner)) == 0 &&
            ks_reg_holds_current(r, live->kcv))
            return KS_OK;
    char theirs[2 * KS_KCV_LEN + 1];
    ks_kcv_hex(r->owner, theirs);
    ks_err_set(err, "the key file %s serves another keystore (id %s...), not the one in %s: the copy would take "
                    "its keys, and lose them to that keystore's clear-history. Nothing was restored: configure a key "
                    "file of this keystore's own, then restore (or, if the copy is sealed under a key of that file, "
                    "restore it where that keystore is)", cfg->master_key, theirs, cfg->keystore);
    return ks_err_in(err, KS_AREA_KEY, KS_EPERM);
}

/* A keystore directory a failed restore made: the lock files it made in
 * it, then the directory (left if anything else is in it). */
static void remove_made_dir(const char *dir)
{
    static const char *const made[] = {"rotation.lock", "users.lock", "lock.mdb"};
    char p[4200];
    for (size_t i = 0; i < sizeof(made) / sizeof(made[0]); i++)
        if (snprintf(p, sizeof(p), "%s/%s", dir, made[i]) < (int)sizeof(p))
            (void)unlink(p);
    ks_remove_scratch(dir);
    (void)rmdir(dir);
}

int ks_mk_restore(const ks_config *cfg, const char *file, const ks_mk_opts *o, ks_mk_result *res, ks_err *err)
{
    ks_registers regs;
    ks_mkey cur;
    ks_mk_result mine;
    bool have_regs = false;
    int fd, rc;

    if (!cfg || !cfg->keystore || !file)
        return KS_EINVAL;
    const ks_backend_ops *ops = cfg->backend ? ks_backend_find(cfg->backend) : KS_BACKEND_DEFAULT;
    if (!ops)
        return KS_EINVAL;
    if (!res)
        res = &mine;
    memset(res, 0, sizeof(*res));
    memset(&regs, 0, sizeof(regs));
    /* A restore on a new host, or into a new place: the keystore's
     * directory made as init makes it (0700), then the copy goes in; if
     * the restore fails, the directory goes again (made_dir). */
    struct stat dsb;
    bool made_dir = false;
    if (stat(cfg->keystore, &dsb) != 0) {
        int e = errno;
        if (e == ENOENT && lstat(cfg->keystore, &dsb) == 0) {
            ks_err_set(err, "the keystore path %s is a symbolic link to nothing; nothing was restored (name a "
                            "directory in the configuration)", cfg->keystore);
            return KS_EINVAL;
        }
        if (e != ENOENT || ks_mkdir_p(cfg->keystore, true) != 0) {
            e = e != ENOENT ? e : errno;
            ks_err_set(err, "cannot create the keystore directory %s: %s; nothing was restored (create it, mode "
                            "0700, then restore again)", cfg->keystore, strerror(e));
            return e == EACCES || e == EPERM || e == EROFS ? KS_EPERM : KS_EIO;
        }
        made_dir = true;
    } else if (!S_ISDIR(dsb.st_mode)) {
        ks_err_set(err, "the keystore path %s is not a directory; nothing was restored", cfg->keystore);
        return KS_EINVAL;
    }
    if ((fd = lock_take(cfg->keystore, o, err)) < 0) {
        if (made_dir)
            (void)rmdir(cfg->keystore);
        return fd;
    }
    ks_remove_scratch(cfg->keystore);
    /* The registers, read under the lock: the copy may be sealed under any of
     * them; it is resealed under CURRENT. */
    if (!is_default(cfg->master_key)) {
        if ((rc = ks_reg_load(cfg->master_key, cfg->key_file_mode, &regs, err)) != KS_OK)
            goto out;
        have_regs = true;
        cur = regs.current;
    } else {
        ks_mkey_default(&cur);
    }
    void *gate_arg[2] = {have_regs ? &regs : NULL, (void *)cfg};
    if (ops == &ks_lmdb_backend)
        rc = ks_restore_locked(cfg->keystore, file, have_regs ? &regs : NULL, &cur, restore_gate, gate_arg, res, err);
    else
        rc = restore_shared(cfg, ops, file, have_regs ? &regs : NULL, &cur, restore_gate, gate_arg, o, res, err);
    if (rc == KS_OK && have_regs && regs.has_owner &&
        CRYPTO_memcmp(regs.owner, res->keystore_id, sizeof(regs.owner)) != 0) {
        /* The file names the keystore replaced: now the copy, if it can be
         * written and is as it was read before the swap (else the next step
         * does it: the copy says whose place it took). Read again, never the
         * registers of before written back over a change made meanwhile. */
        ks_err e2 = KS_ERR_INIT;
        ks_registers now;
        bool same = ks_reg_load(cfg->master_key, cfg->key_file_mode, &now, &e2) == KS_OK && same_regs(&now, &regs) &&
                    now.has_owner && CRYPTO_memcmp(now.owner, regs.owner, sizeof(now.owner)) == 0;
        if (same) {
            memcpy(now.owner, res->keystore_id, sizeof(now.owner));
            same = ks_reg_save(cfg->master_key, &now, &e2) == KS_OK;
        }
        ks_reg_clear(&now);
        if (!same)
            ks_log(KS_LOG_INFO, "keystore %s: its key file %s names the keystore it replaced until a step rewrites "
                   "it (%s)", cfg->keystore, cfg->master_key, e2.msg[0] ? e2.msg : "it changed meanwhile");
    }
out:
    ks_mkey_clear(&cur);
    ks_reg_clear(&regs);
    if (rc != KS_OK && made_dir) /* nothing was restored: the new directory goes, with what the attempt made */
        remove_made_dir(cfg->keystore);
    lock_release(fd);
    return rc;
}

/* What ks_verify found that restore would refuse in a copy, for backup:
 * how many, and the first's sentence. Not the findings about the key file
 * ('K': it lacks the staged key; 'M': the keystore is older than it, or it
 * serves another keystore): the keystore's copy is as good as the keystore,
 * and its open said what is wrong. */
typedef struct {
    uint64_t n;
    char first[1024];
} findings;

static void record_finding(char kind, uint32_t token, uint64_t oid, int e, const char *what, void *arg)
{
    findings *f = arg;
    if (kind == 'K' || kind == 'M' || f->n++)
        return;
    if (what)
        snprintf(f->first, sizeof(f->first), "%s", what);
    else if (kind == 'T')
        snprintf(f->first, sizeof(f->first), "token %u's record: %s", token, ks_strerror(e));
    else
        snprintf(f->first, sizeof(f->first), "object %llu of token %u: %s", (unsigned long long)oid, token,
                 ks_strerror(e));
}

int ks_mk_backup(ks_mk *m, const char *file, const ks_mk_opts *o, ks_info *info, ks_err *err)
{
    int fd, rc;
    if (!m || !file)
        return KS_EINVAL;
    /* Under the lock no step changes the keys between the state we report and
     * the snapshot we copy: the keys named are exactly the copy's. */
    void *g;
    if ((rc = locks_take(m, o, &fd, &g, err)) != KS_OK)
        return rc;
    /* A copy restore would refuse is no backup: the keystore's records are
     * checked as restore checks a copy's (and the pages as the copy is made). */
    uint64_t checked = 0, failed = 0;
    findings fnd = {0, ""};
    rc = ks_verify(m->st, record_finding, &fnd, &checked, &failed);
    if (rc == KS_ECORRUPT || (rc == KS_OK && fnd.n)) {
        ks_err_set(err, "keystore %s is damaged (%llu problem%s in %llu records, the first: %s; 'p11mk-admin verify' "
                        "lists them); no backup was written, since restore would refuse it: restore the last good "
                        "backup", m->dir, (unsigned long long)fnd.n, fnd.n == 1 ? "" : "s",
                   (unsigned long long)checked, fnd.first[0] ? fnd.first : ks_strerror(KS_ECORRUPT));
        rc = KS_ECORRUPT;
    } else if (rc == KS_OK) {
        rc = ks_backup(m->st, file, info, err);
    }
    locks_release(m, fd, g);
    return rc;
}

int ks_mk_export(ks_mk *m, const char *file, const ks_mk_opts *o, ks_err *err)
{
    int fd, rc;
    if (!m || !file)
        return KS_EINVAL;
    void *g;
    if ((rc = locks_take(m, o, &fd, &g, err)) != KS_OK)
        return rc;
    rc = ks_export_default(m->st, file, err);
    locks_release(m, fd, g);
    return rc;
}

int ks_mk_hosts(ks_mk *m, ks_host **hosts, size_t *n, ks_err *err)
{
    ks_registers r;
    ks_info info;
    ks_mkey cur, nxt;
    int rc;
    if (!m || !hosts || !n)
        return KS_EINVAL;
    *hosts = NULL;
    *n = 0;
    if (!ks_fleet_shared(m->st))
        return KS_OK;
    memset(&r, 0, sizeof(r));
    memset(&cur, 0, sizeof(cur));
    memset(&nxt, 0, sizeof(nxt));
    if ((rc = refresh_keyfile(m, err)) != KS_OK || (rc = ks_get_info(m->st, &info)) != KS_OK)
        return rc;
    /* The keystore's CURRENT and NEW, wherever this host's key file has them
     * (it may be a step behind the keystore until its next step repairs it). */
    bool have_cur, have_nxt = false;
    if (m->keyfile) {
        if ((rc = load_regs(m, &r, err)) != KS_OK)
            return rc;
        have_cur = ks_reg_find(&r, info.kcv, cur.key) != KS_REG_NONE;
        have_nxt = info.new_epoch && ks_reg_find(&r, info.new_kcv, nxt.key) != KS_REG_NONE;
    } else {
        ks_mkey_default(&cur);
        have_cur = true;
    }
    rc = ks_fleet_list(m->st, have_cur ? &cur : NULL, have_nxt ? &nxt : NULL, hosts, n);
    if (rc != KS_OK)
        ks_err_set(err, "cannot read which hosts share keystore %s: %s", m->dir, ks_strerror(rc));
    ks_reg_clear(&r);
    ks_mkey_clear(&cur);
    ks_mkey_clear(&nxt);
    return rc;
}

int ks_mk_host_remove(ks_mk *m, const char *name, const ks_mk_opts *o, ks_err *err)
{
    int fd, rc;
    void *g;
    if (!m || !name)
        return KS_EINVAL;
    if (!ks_fleet_shared(m->st)) {
        ks_err_set(err, "keystore %s is not shared by several hosts (backend %s)", m->dir, m->st->ops->name);
        return KS_EINVAL;
    }
    /* Under the locks: no rewrap or commit is deciding on the fleet meanwhile. */
    if ((rc = locks_take(m, o, &fd, &g, err)) != KS_OK)
        return rc;
    rc = ks_fleet_remove(m->st, name);
    if (rc == KS_ENOTFOUND)
        ks_err_set(err, "no host named %s shares keystore %s; 'p11mk-admin status' lists them", name, m->dir);
    else if (rc != KS_OK)
        ks_err_set(err, "cannot remove host %s: %s", name, ks_strerror(rc));
    else
        ks_log(KS_LOG_INFO, "keystore %s: host %s taken out of the fleet", m->dir, name);
    locks_release(m, fd, g);
    return rc;
}
