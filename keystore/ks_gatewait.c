/* p11mk keystore: a bounded wait for a keystore's writer gate, and who holds it.
 *
 * The writer gate (ks_lmdb.c) is an OFD write lock on one byte of data.mdb
 * that every writing p11mk process takes for the length of a write
 * transaction. Applications wait for it without a bound, as they would for
 * LMDB's own writer lock. A master-key step must not: an application
 * stopped inside a write (SIGSTOP, a debugger, a frozen container) holds
 * every writer up, and the admin command waited without a word, whatever
 * its --wait (a hostile tester). While a step holds its locks,
 * ks_lifecycle.c sets ks_gate_bound_here for its thread: the gate is then
 * waited for at most that long, the admin told after a second who holds
 * it, and the write fails with KS_EBUSY, naming the holder, when the time
 * is up (nothing of it written; the step resumes when run again).
 *
 * How: an OFD lock belongs to the open file description, not to a thread,
 * so a thread of our own blocks in F_OFD_SETLKW on a duplicate descriptor
 * while the caller waits on a condition variable with a deadline. Blocking
 * keeps the step's turn among the applications waiting beside it (a
 * polling step starved while they wrote back to back). A step that gives
 * up leaves that thread waiting (it cannot be woken but by a signal): when
 * it gets the gate it lets it go at once. Until it has, no other wait in
 * this process may begin (two waits on one description would both "get"
 * the lock, and the orphan's release would take it from the other).
 *
 * The holder: the kernel names no process for an OFD lock (/proc/locks and
 * F_OFD_GETLK give pid -1), but each process's /proc/PID/fdinfo/FD lists
 * the locks held through that descriptor. Read once, when the wait passes a
 * second; processes the caller may not inspect (another user's, without
 * root) are not named. */
#include "ks_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

_Thread_local const ks_gate_bound *ks_gate_bound_here;

/* Waits given up on whose thread has not let the gate go yet (process-wide). */
static atomic_int orphans;

typedef struct {
    pthread_mutex_t mx;
    pthread_cond_t cv;
    pthread_t thread;
    int fd;         /* a duplicate of the gate's descriptor: the lock it takes is the caller's */
    off_t at;       /* the gate's byte */
    int state;      /* 0: waiting; 1: the gate is taken; -1: failed (err) */
    int err;
    bool abandoned; /* the caller gave up: let the gate go at once and free this */
} waiter;

static int ofd_lock(int fd, off_t at, short type, bool wait)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
    while (fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) != 0)
        if (errno != EINTR)
            return errno;
    return 0;
}

static void *waiter_run(void *p)
{
    waiter *w = p;
    int rc = ofd_lock(w->fd, w->at, F_WRLCK, true);
    pthread_mutex_lock(&w->mx);
    if (w->abandoned) { /* detached by the caller, which no longer looks at w */
        if (rc == 0)
            ofd_lock(w->fd, w->at, F_UNLCK, false);
        pthread_mutex_unlock(&w->mx);
        close(w->fd);
        pthread_mutex_destroy(&w->mx);
        pthread_cond_destroy(&w->cv);
        free(w);
        atomic_fetch_sub(&orphans, 1);
        return NULL;
    }
    w->state = rc == 0 ? 1 : -1;
    w->err = rc;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mx);
    return NULL;
}

/* "pid N (command)" of the process holding byte at of fd's file through
 * one of its descriptors; false when none could be seen. */
static bool holder_of(int fd, off_t at, char *out, size_t n)
{
    struct stat sb;
    char want[96], path[64], buf[4096];
    if (fstat(fd, &sb) != 0)
        return false;
    /* as the kernel prints it: "OFDLCK ADVISORY  WRITE -1 MAJ:MIN:INODE START END" */
    snprintf(want, sizeof(want), " %02x:%02x:%lu %lld %lld", major(sb.st_dev), minor(sb.st_dev),
             (unsigned long)sb.st_ino, (long long)at, (long long)at);
    DIR *proc = opendir("/proc");
    if (!proc)
        return false;
    bool found = false;
    struct dirent *d;
    while (!found && (d = readdir(proc)) != NULL) {
        char *end;
        long pid = strtol(d->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/fdinfo", pid);
        DIR *fds = opendir(path);
        if (!fds)
            continue;
        struct dirent *f;
        while (!found && (f = readdir(fds)) != NULL) {
            if (f->d_name[0] == '.')
                continue;
            snprintf(path, sizeof(path), "/proc/%ld/fdinfo/%.16s", pid, f->d_name);
            int i = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (i < 0)
                continue;
            ssize_t r = read(i, buf, sizeof(buf) - 1);
            close(i);
            if (r <= 0)
                continue;
            buf[r] = '\0';
            for (char *l = strstr(buf, "lock:"); l && !found; l = strstr(l + 5, "lock:")) {
                char *nl = strchr(l, '\n');
                if (nl)
                    *nl = '\0';
                found = strstr(l, "OFDLCK") && strstr(l, "WRITE") && strstr(l, want);
                if (nl)
                    *nl = '\n';
            }
        }
        closedir(fds);
        if (found) {
            char comm[64] = "";
            snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
            int c = open(path, O_RDONLY | O_CLOEXEC);
            ssize_t r = c >= 0 ? read(c, comm, sizeof(comm) - 1) : -1;
            if (c >= 0)
                close(c);
            comm[r > 0 ? r : 0] = '\0';
            for (char *q = comm; *q; q++) /* a command name is the process's own choice: printable only */
                if (*q == '\n')
                    *q = '\0';
                else if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e)
                    *q = '?';
            snprintf(out, n, "pid %ld (%s)", pid, comm[0] ? comm : "?");
        }
    }
    closedir(proc);
    return found;
}

static uint64_t ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - t0->tv_sec) * 1000u + (uint64_t)((t.tv_nsec - t0->tv_nsec) / 1000000);
}

bool ks_gate_orphans_wait(unsigned max_ms)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&orphans) > 0) {
        if (max_ms && ms_since(&t0) >= max_ms)
            return false;
        struct timespec nap = {0, 10 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    return true;
}

int ks_gate_lock_bounded(int fd, off_t at, const ks_gate_bound *b, const char *path)
{
    char who[128] = "a process this user cannot inspect";
    unsigned bound = b->wait_ms < KS_GATE_WAIT_MIN_MS ? KS_GATE_WAIT_MIN_MS : b->wait_ms;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!ks_gate_orphans_wait(bound)) { /* an earlier step's wait: it lets the gate go as soon as it has it */
        ks_log(KS_LOG_ERROR, "keystore %s: an earlier wait for its writer gate is still pending in this "
                             "process; run the command again", path);
        return ETIMEDOUT;
    }
    int rc = ofd_lock(fd, at, F_WRLCK, false);
    if (rc != EAGAIN && rc != EACCES)
        return rc;
    waiter *w = calloc(1, sizeof(*w));
    if (!w)
        return ENOMEM;
    pthread_mutex_init(&w->mx, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->at = at;
    if ((w->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0 || (rc = pthread_create(&w->thread, NULL, waiter_run, w)) != 0) {
        rc = w->fd < 0 ? errno : rc;
        if (w->fd >= 0)
            close(w->fd);
        pthread_mutex_destroy(&w->mx);
        pthread_cond_destroy(&w->cv);
        free(w);
        return rc;
    }
    bool told = false;
    pthread_mutex_lock(&w->mx);
    for (;;) {
        uint64_t waited = ms_since(&t0);
        if (w->state != 0 || waited >= bound)
            break;
        if (!told && waited >= KS_GATE_TELL_MS) {
            told = true;
            pthread_mutex_unlock(&w->mx); /* the look-up reads /proc: not under the lock */
            holder_of(fd, at, who, sizeof(who));
            if (b->waiting) {
                char what[256];
                snprintf(what, sizeof(what), "a write to the keystore by %s to end (a process stopped inside a "
                                             "write holds up every writer)", who);
                b->waiting(what, b->arg);
            }
            pthread_mutex_lock(&w->mx);
            continue;
        }
        uint64_t next = told ? bound : (bound < KS_GATE_TELL_MS ? bound : KS_GATE_TELL_MS);
        struct timespec until = t0;
        until.tv_sec += (time_t)(next / 1000);
        until.tv_nsec += (long)(next % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cv, &w->mx, &until);
    }
    if (w->state == 0) { /* given up: the thread lets the gate go when it gets it, and frees w */
        w->abandoned = true;
        atomic_fetch_add(&orphans, 1);
        pthread_detach(w->thread);
        pthread_mutex_unlock(&w->mx);
        if (!told)
            holder_of(fd, at, who, sizeof(who));
        ks_log(KS_LOG_ERROR, "keystore %s: gave up after %u.%u s waiting for a write by %s to end, nothing of "
                             "this one written; if that process is stopped (SIGSTOP, a debugger), let it go on or "
                             "end it, then run the command again (--wait SECONDS waits longer)",
               path, bound / 1000, bound % 1000 / 100, who);
        return ETIMEDOUT;
    }
    rc = w->state > 0 ? 0 : w->err;
    pthread_mutex_unlock(&w->mx);
    pthread_join(w->thread, NULL);
    close(w->fd);
    pthread_mutex_destroy(&w->mx);
    pthread_cond_destroy(&w->cv);
    free(w);
    return rc;
}
