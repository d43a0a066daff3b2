/* Helpers shared by the keystore-layer unit tests. */
#ifndef P11MK_KS_TEST_UTIL_H
#define P11MK_KS_TEST_UTIL_H

#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keystore/ks.h"

static inline int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static inline void rm_rf(const char *dir) { nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

/* Runs fn(arg) in a child that starts from the default actions of SIGSEGV
 * and SIGBUS (cmocka and the sanitizers put their own handlers in place; an
 * application that leaves the defaults gets the keystore's fault frames)
 * and is ended by SIGALRM after `seconds` (a hang is a failure too).
 * Returns its exit code, or -signal. */
static inline int in_child(int (*fn)(void *), void *arg, unsigned seconds)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        signal(SIGBUS, SIG_DFL);
        alarm(seconds);
        _exit(fn(arg));
    }
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : -WTERMSIG(ws);
}

/* A copy of a file, with the given mode (the includer has cmocka's asserts). */
static inline void copy_file(const char *from, const char *to, mode_t mode)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[8192];
    size_t n;
    assert_non_null(in);
    assert_non_null(out);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
    chmod(to, mode);
}

/* One write: a token when tid is 0, then (with data) a new object, or a new
 * version of oid with update, and its CKA_LABEL index entry. */
typedef struct {
    uint32_t tid;
    uint64_t oid;
    const char *data;
    bool update; /* rewrite oid instead of allocating a new id (fn must be repeatable) */
} put_arg;

static inline int put_fn(ks_txn *t, void *arg)
{
    put_arg *a = arg;
    int rc = KS_OK;
    if (!a->tid) {
        rc = ks_token_new_id(t, &a->tid);
        if (rc == KS_OK)
            rc = ks_token_put(t, a->tid, (const uint8_t *)"token", 5);
    }
    if (rc == KS_OK && a->data) {
        if (!a->update && (rc = ks_obj_new_id(t, &a->oid)) == KS_OK)
            rc = ks_obj_create(t, a->tid, a->oid, (const uint8_t *)a->data, strlen(a->data));
        else if (rc == KS_OK)
            rc = ks_obj_put(t, a->tid, a->oid, (const uint8_t *)a->data, strlen(a->data));
        if (rc == KS_OK)
            rc = ks_idx_add(t, a->tid, 3 /* CKA_LABEL */, a->data, strlen(a->data), a->oid);
    }
    return rc;
}

/* KS_OK when the object opens (its value is not looked at). */
static inline int read_obj(ks_store *st, uint32_t tid, uint64_t oid)
{
    ks_txn *t;
    uint8_t *b = NULL;
    size_t l = 0;
    int rc = ks_read_begin(st, &t);
    if (rc != KS_OK)
        return rc;
    rc = ks_obj_get(t, tid, oid, &b, &l);
    ks_read_end(t);
    ks_buf_free(b, l);
    return rc;
}

#endif
