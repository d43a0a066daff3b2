/* PostgreSQL for the unit tests of the postgresql keystore backend: a
 * connection string from the environment, or a fresh database in the cluster
 * that tests/integration/pg-cluster started in $P11MK_TEST_PG_DIR. The
 * password comes from the pgpass file the cluster wrote (PGPASSFILE). Tests
 * skip when neither variable is set. */
#ifndef P11MK_TEST_PG_H
#define P11MK_TEST_PG_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The pg-cluster script: $P11MK_PG_CLUSTER, else the path meson compiled in. */
static inline const char *test_pg_cluster_script(void)
{
    const char *s = getenv("P11MK_PG_CLUSTER");
    if (s && *s)
        return s;
#ifdef P11MK_PG_CLUSTER
    return P11MK_PG_CLUSTER;
#else
    return NULL;
#endif
}

/* $P11MK_TEST_PG_CONNINFO, or NULL when unset or empty. */
static inline const char *test_pg_conninfo(void)
{
    const char *s = getenv("P11MK_TEST_PG_CONNINFO");
    return s && *s ? s : NULL;
}

/* Create a database with a name of its own (process id, a counter, the
 * clock) in the cluster in $P11MK_TEST_PG_DIR and copy its connection string
 * ("host=... port=... dbname=... user=p11mk") into out. Returns 0 on success,
 * 1 when P11MK_TEST_PG_DIR is not set (skip), -1 on failure (said on stderr). */
static inline int test_pg_newdb(char *out, size_t n)
{
    static unsigned counter;
    const char *dir = getenv("P11MK_TEST_PG_DIR");
    const char *script = test_pg_cluster_script();
    char name[64], buf[1024];
    struct timespec ts;
    int fds[2], status = -1;
    size_t len = 0;
    ssize_t r;
    pid_t pid;

    if (!dir || !*dir)
        return 1;
    if (!script) {
        fprintf(stderr, "test_pg_newdb: P11MK_PG_CLUSTER is not set\n");
        return -1;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(name, sizeof name, "p11mk_u%ld_%u_%lx", (long)getpid(), __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED),
             (unsigned long)ts.tv_nsec);
    if (pipe(fds) != 0) {
        perror("test_pg_newdb: pipe");
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        perror("test_pg_newdb: fork");
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl(script, script, "newdb", dir, name, (char *)NULL);
        fprintf(stderr, "test_pg_newdb: cannot run %s: %s\n", script, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    while ((r = read(fds[0], buf + len, sizeof buf - 1 - len)) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        len += (size_t)r;
        if (len == sizeof buf - 1)
            break;
    }
    close(fds[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    buf[len] = '\0';
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        buf[--len] = '\0';
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || len == 0 || strchr(buf, '\n')) {
        fprintf(stderr, "test_pg_newdb: %s newdb %s %s failed\n", script, dir, name);
        return -1;
    }
    if (len >= n) {
        fprintf(stderr, "test_pg_newdb: the connection string needs %zu bytes, %zu given\n", len + 1, n);
        return -1;
    }
    memcpy(out, buf, len + 1);
    return 0;
}

/* The configuration lines that put the keystore KEY (its directory) in a
 * database of its own when P11MK_TEST_PG_DIR is set: "backend = postgresql"
 * and "postgresql = <conninfo>", each ending in a newline, copied into out
 * (empty when the variable is unset: an LMDB run). The database is made
 * the first time KEY is seen and given again for the same KEY (a test that
 * writes its configuration again, or points it back at a keystore, keeps
 * its data): the last few keys are remembered. Returns 0, or -1 on failure
 * (said on stderr). */
static inline int test_pg_backend_lines(const char *key, char *out, size_t n)
{
    enum { KEEP = 8 };
    static struct {
        char key[256];
        char conninfo[512];
    } seen[KEEP];
    static unsigned next;
    char conninfo[512];
    unsigned i;

    if (n == 0)
        return -1;
    out[0] = '\0';
    if (!getenv("P11MK_TEST_PG_DIR") || !*getenv("P11MK_TEST_PG_DIR"))
        return 0;
    for (i = 0; i < KEEP; i++)
        if (seen[i].key[0] && strcmp(seen[i].key, key) == 0)
            break;
    if (i == KEEP) {
        if (test_pg_newdb(conninfo, sizeof conninfo) != 0)
            return -1;
        i = next++ % KEEP;
        snprintf(seen[i].key, sizeof seen[i].key, "%s", key);
        memcpy(seen[i].conninfo, conninfo, sizeof conninfo);
    }
    if ((size_t)snprintf(out, n, "backend = postgresql\npostgresql = %s\n", seen[i].conninfo) >= n) {
        fprintf(stderr, "test_pg_backend_lines: %zu bytes are too few\n", n);
        out[0] = '\0';
        return -1;
    }
    return 0;
}

/* True when the tests run on the postgresql backend (P11MK_TEST_PG_DIR set):
 * the parts that need LMDB's files skip then. */
static inline int test_pg_backend(void)
{
    const char *d = getenv("P11MK_TEST_PG_DIR");
    return d && *d;
}

#endif
