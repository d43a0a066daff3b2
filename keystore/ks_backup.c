/* p11mk keystore: backups, exports under the default key, restores.
 *
 * A backup is the storage backend's compacting copy of the live keystore
 * (LMDB: of the environment, one file), consistent as of one read snapshot, taken while applications keep
 * reading and writing. It stays sealed under the keystore's keys, so it is
 * no more readable than the keystore itself.
 *
 * Crash rules: a backup is written to an anonymous file (O_TMPFILE, or a
 * hidden temporary name where the file system lacks it), fsynced, and only
 * then linked under its name, which it never replaces: a killed backup
 * leaves nothing under the final name. A restore works in DIR/restore.tmp
 * (removed on every path, and at the start of the next restore if a kill
 * left it), checks that the copy is a complete LMDB file before mapping it,
 * verifies every record, and replaces data.mdb by rename only at the end.
 * An export reseals its scratch copy (DIR/export.tmp) under the default key
 * only once the copy's files are unlinked: a killed export leaves nothing
 * under the default key behind. */
#include "ks_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

static int ks_errno(int e) { return e == ENOSPC || e == EDQUOT ? KS_ENOSPC : e == EEXIST ? KS_EEXIST : KS_EIO; }

int ks_backup(ks_store *st, const char *file, ks_info *info, ks_err *err)
{
    char dir[4096], tmp[4200] = "";
    struct stat sb;
    int fd, rc, e = 0;

    if (!st || !file)
        return KS_EINVAL;
    if (lstat(file, &sb) == 0) {
        ks_err_set(err, "cannot create %s: it exists (refusing to overwrite; choose a new file name)", file);
        return KS_EEXIST;
    }
    ks_dirname(file, dir, sizeof(dir));
    fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) { /* no O_TMPFILE here: a hidden name, unlinked on every path we live through */
        snprintf(tmp, sizeof(tmp), "%s/.p11mk-backup-XXXXXX", dir);
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
            e = errno;
            ks_err_set(err, "cannot create %s: %s", file, strerror(e));
            return ks_errno(e);
        }
    }
    if (info && (rc = ks_get_info(st, info)) != KS_OK) {
        close(fd);
        if (tmp[0])
            unlink(tmp);
        return rc;
    }
    char why[256] = "";
    rc = st->ops->copy(st->be, fd, &e, why, sizeof(why));
    if (rc == KS_OK) {
        if (fsync(fd) != 0) {
            e = errno;
        } else if (tmp[0]) {
            if (link(tmp, file) != 0)
                e = errno;
        } else {
            char proc[64];
            snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
            if (linkat(AT_FDCWD, proc, AT_FDCWD, file, AT_SYMLINK_FOLLOW) != 0)
                e = errno;
        }
        if (e) {
            snprintf(why, sizeof(why), "%s", strerror(e));
            rc = ks_errno(e);
        }
    }
    close(fd);
    if (tmp[0])
        unlink(tmp);
    if (rc != KS_OK) {
        if (e == EEXIST)
            ks_err_set(err, "cannot create %s: it appeared meanwhile (refusing to overwrite; choose a new file "
                            "name)", file);
        else if (rc == KS_ECORRUPT) /* the keystore's pages, not the copy's destination */
            ks_err_set(err, "the keystore is damaged (%s); no backup was written to %s: run 'p11mk-admin verify', "
                            "then restore the last good backup", why, file);
        else
            ks_err_set(err, "cannot write the copy to %s: %s%s", file, why,
                       e == ENOSPC ? " (the file system is full; free space or write the backup elsewhere)" : "");
        return rc;
    }
    ks_fsync_dir(dir);
    return KS_OK;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void rm_tree(const char *dir) { nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS); }

void ks_remove_scratch(const char *dir)
{
    char p[4200];
    static const char *const names[] = {"restore.tmp", "export.tmp"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        rm_tree(p);
    }
    snprintf(p, sizeof(p), "%s/export.tmp.mdb", dir);
    (void)unlink(p);
}

/* A scratch keystore directory `dir` holding a copy of `file`. */
static int scratch_from_file(const char *dir, const char *file, ks_err *err)
{
    char data[4200];
    int in = -1, out = -1, rc = KS_OK, e;

    rm_tree(dir); /* left by a restore or export that was killed */
    if (mkdir(dir, 0700) != 0) {
        e = errno;
        ks_err_set(err, "cannot create the scratch directory %s: %s", dir, strerror(e));
        return ks_errno(e);
    }
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    in = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (in < 0) {
        e = errno;
        ks_err_set(err, "cannot read %s: %s; nothing was restored", file, strerror(e));
        rc = KS_EBADFILE;
    } else if ((rc = KS_BACKEND_DEFAULT->check_copy(in, file, err)) != KS_OK) {
        /* refused before copying */
    } else if ((out = open(data, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
        e = errno;
        ks_err_set(err, "cannot create %s: %s", data, strerror(e));
        rc = ks_errno(e);
    } else {
        enum { BUFSZ = 1 << 16 };
        char *buf = malloc(BUFSZ);
        ssize_t r = buf ? 0 : -1;
        errno = buf ? 0 : ENOMEM;
        while (buf && (r = read(in, buf, BUFSZ)) > 0) {
            /* A short write is followed by one that says why (ENOSPC): the
             * errno of the short one is whatever came before. */
            for (ssize_t done = 0, w; done < r; done += w)
                if ((w = write(out, buf + done, (size_t)(r - done))) <= 0) {
                    if (w == 0)
                        errno = ENOSPC;
                    r = -1;
                    break;
                }
            if (r < 0)
                break;
        }
        free(buf);
        if (r < 0 || fsync(out) != 0) {
            e = errno;
            ks_err_set(err, "cannot copy %s into the keystore's directory: %s%s; nothing was changed", file,
                       strerror(e), e == ENOSPC || e == EDQUOT ? " (free space there, then try again)" : "");
            rc = ks_errno(e);
        }
    }
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (rc != KS_OK)
        rm_tree(dir);
    return rc;
}

/* Why a copy was found damaged: what its storage found first (a page, a
 * fault), else what the failed step said, else the records' authentication. */
static const char *copy_why(ks_store *copy, const ks_err *err)
{
    const char *d = copy && copy->ops->copy_damage ? copy->ops->copy_damage(copy->be) : NULL;
    return d ? d : err->msg[0] ? err->msg : "a record in it failed authentication";
}

int ks_export_default(ks_store *st, const char *file, ks_err *err)
{
    char dir[4200], tmpfile[4200];
    ks_info info;
    ks_store *copy = NULL;
    ks_mkey dk, cur;
    int rc;

    if (!st || !file)
        return KS_EINVAL;
    if ((rc = ks_get_info(st, &info)) != KS_OK)
        return rc;
    if (info.rot_state != KS_ROT_IDLE) {
        ks_err_set(err, "a rotation is under way (%s); before exporting, %s", ks_rot_state_name(info.rot_state),
                   ks_rot_busy_advice(info.rot_state));
        return KS_ESTATE;
    }
    snprintf(dir, sizeof(dir), "%s/export.tmp", ks_path(st));
    snprintf(tmpfile, sizeof(tmpfile), "%s/export.tmp.mdb", ks_path(st));
    unlink(tmpfile);
    if ((rc = ks_backup(st, tmpfile, NULL, err)) != KS_OK)
        return rc;
    rc = scratch_from_file(dir, tmpfile, err);
    unlink(tmpfile);
    if (rc != KS_OK)
        return rc;
    /* Open the scratch copy with this store's current key. */
    memset(&cur, 0, sizeof(cur));
    pthread_mutex_lock(&st->ring_lock);
    bool found = ks_find_key(st, info.kcv, cur.key);
    snprintf(cur.source, sizeof(cur.source), "%s", st->keysrc[0] ? st->keysrc : "default");
    pthread_mutex_unlock(&st->ring_lock);
    ks_mkey_default(&dk);
    if (!found) {
        rc = KS_ENOKEY;
    } else if ((rc = ks_open(dir, &cur, KS_OPEN_COPY, &copy, err)) == KS_OK) {
        uint8_t k[KS_KCV_LEN];
        /* Resealed under the default key, the scratch copy must never be
         * left in the keystore's directory, which a copy of the directory
         * takes without the key file (a killed export left it there for
         * anyone to open with master_key = default: a hostile tester). Its
         * files are removed now; the open environment keeps them (by its
         * descriptors and map) until it is closed, or the process dies. */
        rm_tree(dir);
        ks_mkey_kcv(&dk, k);
        if (CRYPTO_memcmp(k, info.kcv, KS_KCV_LEN) != 0) /* not already on the default key */
            rc = ks_rekey(copy, &dk, 0, err);
        if (rc == KS_ECORRUPT) { /* the copy is the keystore's as it is now */
            char why[sizeof(err->msg)];
            snprintf(why, sizeof(why), "%s", copy_why(copy, err));
            ks_err_set(err, "the keystore's copy is damaged or altered (%s); nothing was exported: check the keystore "
                            "with 'p11mk-admin verify'", why);
        }
        if (rc == KS_OK)
            rc = ks_backup(copy, file, NULL, err);
        ks_close(copy);
    }
    ks_mkey_clear(&cur);
    ks_mkey_clear(&dk);
    rm_tree(dir);
    if (rc == KS_OK)
        ks_log(KS_LOG_INFO, "keystore %s exported under the default key to %s", ks_path(st), file);
    return rc;
}

/* Open the scratch copy under any register of the key file, or the default
 * key (an export); withdraw a rotation that was under way in it. */
static int open_copy(const char *scratch, const char *file, const ks_mkey *current, ks_store **copy,
                     ks_mk_result *res, ks_err *err)
{
    ks_err e2 = KS_ERR_INIT;
    int rc = ks_open(scratch, current, KS_OPEN_COPY, copy, err);
    if (rc == KS_EWRONGKEY && !current->is_default) {
        ks_mkey dk;
        ks_mkey_default(&dk);
        if (ks_open(scratch, &dk, KS_OPEN_COPY, copy, &e2) == KS_OK) {
            err->msg[0] = '\0';
            rc = KS_OK;
            if (res)
                res->from_default = true;
        }
        ks_mkey_clear(&dk);
    }
    if (rc == KS_EWRONGKEY) {
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s", err->msg);
        ks_err_set(err, "%s cannot be opened with this host's keys: %s; nothing was restored, the keystore is unchanged",
                   file, why);
    } else if (rc == KS_ENOKEY) {
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s", err->msg);
        ks_err_set(err, "%s cannot be restored here: %s; nothing was restored, the keystore is unchanged", file, why);
    } else if (rc == KS_ECORRUPT || rc == KS_EVERSION || rc == KS_ENOTFOUND) {
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s", err->msg);
        ks_err_set(err, "%s is not a usable keystore copy (%s); nothing was restored", file, why);
        rc = KS_EBADFILE;
    }
    if (rc != KS_OK)
        return rc;
    ks_info ci;
    if ((rc = ks_get_info(*copy, &ci)) == KS_OK && ci.rot_state != KS_ROT_IDLE)
        rc = ks_rot_abort(*copy, 20000, NULL, NULL, NULL, err);
    if (rc == KS_OK && (rc = ks_get_info(*copy, &ci)) == KS_OK && res)
        memcpy(res->backup_kcv, ci.kcv, KS_KCV_LEN);
    if (rc != KS_OK) {
        ks_close(*copy);
        *copy = NULL;
    }
    return rc;
}

/* Does any process have the keystore in dir open? Two signs, either is
 * enough: the shared flock every opener holds on users.lock (taken here
 * exclusively and kept in *users_fd when nobody has it), and the read lock
 * LMDB itself keeps on byte 0 of lock.mdb while an environment is open (which
 * holds even if users.lock was removed or replaced). */
static int in_use(const char *dir, int *users_fd, ks_err *err)
{
    char p[4300];
    struct stat a, b;
    int fd;

    *users_fd = -1;
    snprintf(p, sizeof(p), "%s/users.lock", dir);
    fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0600);
    if (fd < 0 || fstat(fd, &a) != 0 || !S_ISREG(a.st_mode)) {
        ks_err_set(err, "%s is not a regular file (a link or something else was put there); remove it, then "
                        "restore again", p);
        if (fd >= 0)
            close(fd);
        return KS_ECORRUPT;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || stat(p, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
        close(fd);
        goto busy;
    }
    snprintf(p, sizeof(p), "%s/lock.mdb", dir);
    int lfd = open(p, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (lfd >= 0) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
        bool busy = fcntl(lfd, F_GETLK, &fl) != 0 || fl.l_type != F_UNLCK;
        close(lfd);
        if (busy) {
            close(fd);
            goto busy;
        }
    }
    *users_fd = fd;
    return KS_OK;
busy:
    ks_err_set(err, "keystore %s is in use by running applications (or another p11mk-admin); stop them, then "
                    "restore again", dir);
    return KS_EBUSY;
}

/* Make the scratch copy of file ready to replace a keystore whose counters
 * are live_epoch and live_gen: opened under the registers (or the default
 * key), any rotation in it withdrawn, resealed under CURRENT at a later
 * epoch, a later generation, every record verified. */
static int prepare_copy(const char *scratch, const char *file, const ks_registers *regs, const ks_mkey *current,
                        uint32_t live_epoch, uint64_t live_gen, const ks_peek_ids *live, ks_mk_result *res,
                        ks_err *err)
{
    ks_store *copy = NULL;
    int rc;
    /* ... and every epoch the key file knows (the keystore it replaces may not
     * open at all): a restored copy is never older than its key file. */
    if (regs && ks_reg_max_epoch(regs) > live_epoch)
        live_epoch = ks_reg_max_epoch(regs);
    /* A key file one commit behind (a fleet host whose NEW another host
     * committed; its next step would promote it, ks_lifecycle.c repair): the
     * keystore in place is sealed under that NEW. Resealed under the file's
     * CURRENT, the copy would go back under a key the fleet retired (held
     * by the other hosts only in their history, and by a host taken out of
     * the fleet as its CURRENT). */
    uint8_t nk[KS_KCV_LEN];
    if (regs && regs->has_new && live->have_kcv) {
        ks_mkey_kcv(&regs->staged, nk);
        if (CRYPTO_memcmp(nk, live->kcv, KS_KCV_LEN) == 0)
            current = &regs->staged;
    }
    if ((rc = open_copy(scratch, file, current, &copy, res, err)) != KS_OK)
        return rc;
    /* Every page first: one LMDB could not have written makes the steps
     * below fail on whatever they meet first, said less well. */
    char pwhy[512];
    if (ks_check_pages(copy, pwhy, sizeof(pwhy)) == KS_ECORRUPT) {
        ks_err_set(err, "%s is damaged or altered (%s); nothing was restored, the keystore is unchanged: restore "
                        "another backup", file, pwhy);
        ks_close(copy);
        return KS_EBADFILE;
    }
    ks_info ci;
    uint8_t k[KS_KCV_LEN];
    ks_mkey_kcv(current, k);
    if ((rc = ks_get_info(copy, &ci)) == KS_OK &&
        (CRYPTO_memcmp(k, ci.kcv, KS_KCV_LEN) != 0 || ci.epoch <= live_epoch)) {
        ks_mkey cur = *current;
        rc = ks_rekey(copy, &cur, live_epoch >= ci.epoch ? live_epoch + 1 : ci.epoch + 1, err);
        ks_mkey_clear(&cur);
    }
    if (rc == KS_OK)
        rc = ks_gen_at_least(copy, live_gen + 1);
    /* The copy says whose place it takes (and whose that one had taken), so
     * that the key file serving this place, naming the keystore replaced,
     * follows it, on this host and the others of a fleet. */
    if (rc == KS_OK && live->have_ksid)
        rc = ks_set_succeeds(copy, live); /* a backup of the keystore in place keeps the list it has now */
    if (rc == KS_OK) {
        uint64_t checked, failed;
        rc = ks_verify(copy, NULL, NULL, &checked, &failed);
        if (rc == KS_OK && failed) {
            ks_err_set(err, "%s is damaged or altered (%llu of its %llu records fail to open or do not match its "
                            "metadata); nothing was restored, the keystore is unchanged: restore another backup", file,
                       (unsigned long long)failed, (unsigned long long)checked);
            rc = KS_EBADFILE;
        }
    }
    if (rc == KS_ECORRUPT) {
        /* Found while the copy was read or resealed: the copy's damage, not
         * the keystore's (whose record names the step's message gives). */
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s", copy_why(copy, err));
        ks_err_set(err, "%s is damaged or altered (%s); nothing was restored, the keystore is unchanged: restore "
                        "another backup", file, why);
        rc = KS_EBADFILE;
    }
    if (rc == KS_OK && res && ks_get_info(copy, &ci) == KS_OK) {
        res->epoch = ci.epoch;
        memcpy(res->kcv, ci.kcv, KS_KCV_LEN);
        memcpy(res->keystore_id, ci.keystore_id, sizeof(res->keystore_id));
    }
    ks_close(copy);
    return rc;
}

int ks_restore_locked(const char *dir, const char *file, const ks_registers *regs, const ks_mkey *current,
                      ks_restore_gate gate, void *arg, ks_mk_result *res, ks_err *err)
{
    char scratch[4200], from[4300], to[4300];
    uint32_t live_epoch = 0;
    uint64_t live_gen = 0;
    ks_peek_ids live;
    ks_mk_result mine;
    int rc, lfd = -1;

    if (!res)
        res = &mine;

    snprintf(scratch, sizeof(scratch), "%s/restore.tmp", dir);
    /* In use now: say so before any work (the swap checks again). */
    if ((rc = in_use(dir, &lfd, err)) != KS_OK)
        return rc;
    close(lfd);
    lfd = -1;
    if ((rc = scratch_from_file(scratch, file, err)) != KS_OK)
        return rc;
    /* The keystore being replaced, if it opens at all: the copy continues its
     * epochs and generations, so nothing that saw the old one can take the
     * new one for an older state. */
    memset(&live, 0, sizeof(live));
    (void)ks_peek_counters(dir, &live_epoch, &live_gen, &live);
    if ((rc = prepare_copy(scratch, file, regs, current, live_epoch, live_gen, &live, res, err)) != KS_OK)
        goto out;
    if (gate && (rc = gate(&live, res->keystore_id, arg, err)) != KS_OK)
        goto out;
    /* Swap it in, with nobody using the keystore (openers wait for the
     * users.lock we now hold before they open data.mdb). */
    if ((rc = in_use(dir, &lfd, err)) != KS_OK)
        goto out;
    snprintf(from, sizeof(from), "%s/data.mdb", scratch);
    snprintf(to, sizeof(to), "%s/data.mdb", dir);
    if (rename(from, to) != 0) {
        ks_err_set(err, "cannot replace %s: %s; the keystore is unchanged", to, strerror(errno));
        rc = KS_EIO;
        goto out;
    }
    snprintf(to, sizeof(to), "%s/lock.mdb", dir);
    unlink(to); /* the reader table of the replaced file */
    ks_fsync_dir(dir);
out:
    if (lfd >= 0)
        close(lfd);
    rm_tree(scratch);
    return rc;
}

int ks_restore_shared_locked(const char *dir, const ks_backend_ops *ops, ks_benv *be, bool tables, const char *file,
                             const ks_registers *regs, const ks_mkey *current, ks_restore_gate gate, void *arg,
                             ks_mk_result *res, ks_err *err)
{
    const ks_backend_ops *lm = &ks_lmdb_backend;
    char scratch[4200];
    uint32_t live_epoch = 0;
    uint64_t live_gen = 0;
    ks_peek_ids live;
    ks_mk_result mine;
    int rc;

    if (!res)
        res = &mine;

    snprintf(scratch, sizeof(scratch), "%s/restore.tmp", dir);
    if ((rc = scratch_from_file(scratch, file, err)) != KS_OK)
        return rc;
    /* The storage is live (other hosts use it): a copy whose generation is
     * not past theirs would look older to them, so counters that cannot be
     * read stop the restore (missing ones are 0, as in an empty storage). */
    memset(&live, 0, sizeof(live));
    if (tables && (rc = ks_backend_peek_counters(ops, be, &live_epoch, &live_gen, &live)) != KS_OK) {
        ks_read_error(err, dir, "the epoch and generation of the keystore in place", rc);
        goto out;
    }
    if ((rc = prepare_copy(scratch, file, regs, current, live_epoch, live_gen, &live, res, err)) != KS_OK)
        goto out;
    if (gate && (rc = gate(&live, res->keystore_id, arg, err)) != KS_OK)
        goto out;
    /* One write transaction: every reader sees the old keystore or the new. */
    ks_benv *se = NULL;
    bool rdonly = false, stables = false;
    if ((rc = lm->open(scratch, NULL, 0, &rdonly, &stables, &se, err)) != KS_OK)
        goto out;
    rc = ks_backend_transfer(lm, se, ops, be, tables, true);
    lm->close(se);
    if (rc != KS_OK && !err->msg[0])
        ks_err_set(err, "cannot write the restored keystore into its storage: %s; the keystore is unchanged",
                   ks_strerror(rc));
out:
    rm_tree(scratch);
    return rc;
}
