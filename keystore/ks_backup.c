/* p11mk keystore: backups, exports under the default key, restores.
 *
 * A backup is LMDB's compacting copy of the live environment: one file,
 * consistent as of one read transaction, taken while applications keep
 * reading and writing. It stays sealed under the keystore's keys, so it is
 * no more readable than the keystore itself. */
#include "keystore/ks_internal.h"

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

static int copy_to_fd(ks_store *st, int fd)
{
    /* No map resize may happen during the copy. */
    pthread_rwlock_rdlock(&st->resize);
    int rc = mdb_env_copyfd2(st->env, fd, MDB_CP_COMPACT);
    pthread_rwlock_unlock(&st->resize);
    return rc;
}

int ks_backup(ks_store *st, const char *file, ks_err *err)
{
    int fd, rc;
    if (!st || !file)
        return KS_EINVAL;
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        ks_err_set(err, "cannot create %s: %s%s", file, strerror(errno),
                   errno == EEXIST ? " (refusing to overwrite; choose a new file name)" : "");
        return errno == EEXIST ? KS_EEXIST : KS_EIO;
    }
    rc = copy_to_fd(st, fd);
    if (rc == MDB_SUCCESS && fsync(fd) != 0)
        rc = errno;
    if (close(fd) != 0 && rc == MDB_SUCCESS)
        rc = errno;
    if (rc != MDB_SUCCESS) {
        ks_err_set(err, "cannot write the copy to %s: %s", file, mdb_strerror(rc));
        unlink(file);
        return KS_EIO;
    }
    return KS_OK;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* A scratch keystore directory holding a copy of `file` (or of a live store). */
static int scratch_from_file(const char *near, const char *file, char *dir, size_t n, ks_err *err)
{
    char data[4200];
    snprintf(dir, n, "%s.p11mk-tmp-XXXXXX", near);
    if (!mkdtemp(dir)) {
        ks_err_set(err, "cannot create a scratch directory next to %s: %s", near, strerror(errno));
        return KS_EIO;
    }
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    int in = open(file, O_RDONLY | O_CLOEXEC), out = -1, rc = KS_OK;
    if (in < 0) {
        ks_err_set(err, "cannot read %s: %s", file, strerror(errno));
        rc = KS_ENOTFOUND;
    } else if ((out = open(data, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
        rc = KS_EIO;
    } else {
        char buf[1 << 16];
        ssize_t r;
        while ((r = read(in, buf, sizeof(buf))) > 0)
            if (write(out, buf, (size_t)r) != r) {
                r = -1;
                break;
            }
        if (r < 0 || fsync(out) != 0) {
            ks_err_set(err, "cannot copy %s: %s", file, strerror(errno));
            rc = KS_EIO;
        }
    }
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (rc != KS_OK)
        nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    return rc;
}

/* Reseal a (scratch) store under `to`: stage, rewrap, commit. */
static int rekey(ks_store *st, const ks_mkey *to, ks_err *err)
{
    int rc = ks_rot_stage(st, to, err);
    if (rc == KS_OK)
        rc = ks_rot_rewrap(st, 20000, NULL, NULL, err);
    if (rc == KS_OK)
        rc = ks_rot_commit(st, err);
    return rc;
}

int ks_export_default(ks_store *st, const char *file, ks_err *err)
{
    char dir[4096], tmpfile[4096];
    ks_info info;
    ks_store *copy = NULL;
    ks_mkey dk, cur;
    int rc;

    if (!st || !file)
        return KS_EINVAL;
    if ((rc = ks_get_info(st, &info)) != KS_OK)
        return rc;
    if (info.rot_state != KS_ROT_IDLE) {
        ks_err_set(err, "a rotation is under way (%s); finish it (rewrap, commit) or abort it before exporting",
                   ks_rot_state_name(info.rot_state));
        return KS_EBUSY;
    }
    snprintf(tmpfile, sizeof(tmpfile), "%s.p11mk-copy", file);
    unlink(tmpfile);
    if ((rc = ks_backup(st, tmpfile, err)) != KS_OK)
        return rc;
    rc = scratch_from_file(file, tmpfile, dir, sizeof(dir), err);
    unlink(tmpfile);
    if (rc != KS_OK)
        return rc;
    /* Open the scratch copy with this store's current key. */
    memset(&cur, 0, sizeof(cur));
    pthread_mutex_lock(&st->ring_lock);
    bool found = ks_find_key(st, info.kcv, cur.key);
    pthread_mutex_unlock(&st->ring_lock);
    snprintf(cur.source, sizeof(cur.source), "%s", st->keysrc[0] ? st->keysrc : "default");
    ks_mkey_default(&dk);
    if (!found) {
        rc = KS_ENOKEY;
    } else if ((rc = ks_open(dir, &cur, 0, &copy, err)) == KS_OK) {
        uint8_t k[KS_KCV_LEN];
        ks_mkey_kcv(&dk, k);
        if (CRYPTO_memcmp(k, info.kcv, KS_KCV_LEN) != 0) /* not already on the default key */
            rc = rekey(copy, &dk, err);
        if (rc == KS_OK)
            rc = ks_backup(copy, file, err);
        ks_close(copy);
    }
    ks_mkey_clear(&cur);
    ks_mkey_clear(&dk);
    nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    if (rc == KS_OK)
        ks_log(KS_LOG_INFO, "keystore %s exported under the default key to %s", ks_path(st), file);
    return rc;
}

int ks_restore(const char *dir, const char *file, const ks_mkey *mk, ks_err *err)
{
    char scratch[4096], lp[4200], from[4200], to[4200];
    ks_store *copy = NULL;
    ks_err e2 = {{0}};
    int rc, lfd;

    if (!dir || !file || !mk)
        return KS_EINVAL;
    if ((rc = scratch_from_file(dir, file, scratch, sizeof(scratch), err)) != KS_OK)
        return rc;
    rc = ks_open(scratch, mk, 0, &copy, err);
    if (rc == KS_EWRONGKEY && !mk->is_default) {
        /* An export under the default key: reseal it under this host's key. */
        ks_mkey dk;
        ks_mkey_default(&dk);
        if (ks_open(scratch, &dk, 0, &copy, &e2) == KS_OK) {
            ks_mkey cur = *mk;
            err->msg[0] = '\0';
            rc = rekey(copy, &cur, err);
            ks_mkey_clear(&cur);
            if (rc != KS_OK) {
                ks_close(copy);
                copy = NULL;
            }
        }
        ks_mkey_clear(&dk);
    }
    if (rc == KS_OK) {
        /* A backup under a retired key is resealed under the current one, so
         * the keystore and the registers agree again. */
        ks_info ci;
        uint8_t k[KS_KCV_LEN];
        ks_mkey_kcv(mk, k);
        if (ks_get_info(copy, &ci) == KS_OK && ci.rot_state == KS_ROT_IDLE &&
            CRYPTO_memcmp(k, ci.kcv, KS_KCV_LEN) != 0) {
            ks_mkey cur = *mk;
            rc = rekey(copy, &cur, err);
            ks_mkey_clear(&cur);
        }
    }
    if (rc == KS_OK) {
        uint64_t checked, failed;
        rc = ks_verify(copy, NULL, NULL, &checked, &failed);
        if (rc == KS_OK && failed) {
            ks_err_set(err, "%llu of %llu records of %s fail to open; it is damaged, nothing was restored",
                       (unsigned long long)failed, (unsigned long long)checked, file);
            rc = KS_ECORRUPT;
        }
        ks_close(copy);
    }
    if (rc != KS_OK) {
        nftw(scratch, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
        return rc;
    }
    /* Swap it in, with nobody using the keystore. */
    snprintf(lp, sizeof(lp), "%s/users.lock", dir);
    lfd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        ks_err_set(err, "keystore %s is in use by running applications (or another p11mk-admin); stop them, then "
                        "restore again", dir);
        if (lfd >= 0)
            close(lfd);
        nftw(scratch, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
        return KS_EBUSY;
    }
    snprintf(from, sizeof(from), "%s/data.mdb", scratch);
    snprintf(to, sizeof(to), "%s/data.mdb", dir);
    if (rename(from, to) != 0) {
        ks_err_set(err, "cannot replace %s: %s; the keystore is unchanged", to, strerror(errno));
        rc = KS_EIO;
    } else {
        snprintf(to, sizeof(to), "%s/lock.mdb", dir);
        unlink(to); /* the reader table of the replaced file */
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    close(lfd);
    nftw(scratch, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    return rc;
}
