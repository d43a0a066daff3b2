/* p11mk keystore: logging shared by every layer (syslog, stderr or a file)
 * and the error strings of the KS_* codes. */
#include "keystore/ks.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_level = KS_LOG_WARN;
static enum { DEST_SYSLOG, DEST_STDERR, DEST_FILE } log_dest = DEST_SYSLOG;
static char log_file[512];
static char log_ident[32] = "p11mk";

const char *ks_strerror(int err)
{
    switch (err) {
    case KS_OK: return "success";
    case KS_ENOTFOUND: return "not found";
    case KS_EIO: return "input/output error in the keystore";
    case KS_ECORRUPT: return "altered or damaged (a record failed authentication, or the storage file is damaged)";
    case KS_EWRONGKEY: return "master key does not match the keystore";
    case KS_ENOMEM: return "out of memory";
    case KS_EPERM: return "permission refused";
    case KS_EINVAL: return "invalid argument";
    case KS_ECONFIG: return "malformed configuration";
    case KS_EEXIST: return "already exists";
    case KS_EVERSION: return "unsupported keystore format version";
    case KS_ENOKEY: return "the master key for this record's epoch is not available";
    case KS_EROFS: return "keystore is read-only";
    case KS_EBUSY: return "keystore is locked by another process";
    case KS_ESTATE: return "the rotation state does not allow this step";
    case KS_ECHANGED: return "the state changed since it was shown; nothing was written";
    case KS_ENOSPC: return "the file system is full; free space, then try again (nothing was written)";
    case KS_EBADFILE: return "the file given is not a usable keystore copy";
    default: return "unknown error";
    }
}

void ks_err_set(ks_err *e, const char *fmt, ...)
{
    va_list ap;
    if (!e)
        return;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

int ks_log_level_parse(const char *s)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (!s)
        return -1;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return KS_LOG_WARN;
    return -1;
}

void ks_log_setup(const char *dest, int level, const char *ident)
{
    pthread_mutex_lock(&log_lock);
    if (level >= KS_LOG_ERROR && level <= KS_LOG_DEBUG)
        log_level = level;
    if (ident)
        snprintf(log_ident, sizeof(log_ident), "%s", ident);
    if (!dest || strcmp(dest, "syslog") == 0) {
        log_dest = DEST_SYSLOG;
    } else if (strcmp(dest, "stderr") == 0) {
        log_dest = DEST_STDERR;
    } else {
        log_dest = DEST_FILE;
        snprintf(log_file, sizeof(log_file), "%s", dest);
    }
    pthread_mutex_unlock(&log_lock);
}

/* A log entry is one line: a message that carries line breaks (libpq's
 * "server closed the connection unexpectedly\n\tThis probably means ...")
 * is joined with spaces, other control characters (from a label, a file
 * name, a server's text) become '?', so no text can forge a line of its own. */
static void one_line(char *m)
{
    char *w = m;
    for (const char *r = m; *r; r++) {
        unsigned char ch = (unsigned char)*r;
        if (ch == '\n' || ch == '\r' || ch == '\t') {
            if (w > m && w[-1] != ' ')
                *w++ = ' ';
        } else {
            *w++ = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
    }
    while (w > m && w[-1] == ' ')
        w--;
    *w = '\0';
}

void ks_log(int level, const char *fmt, ...)
{
    static const char *const tags[] = {"error", "warning", "info", "debug"};
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    char msg[1024];
    va_list ap;
    int saved = errno;

    if (level < KS_LOG_ERROR)
        level = KS_LOG_ERROR;
    if (level > KS_LOG_DEBUG || level > log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    one_line(msg);

    pthread_mutex_lock(&log_lock);
    if (log_dest == DEST_SYSLOG) {
        syslog(LOG_USER | prio[level], "%s[%ld]: %s: %s", log_ident, (long)getpid(), tags[level], msg);
    } else if (log_dest == DEST_STDERR) {
        fprintf(stderr, "%s: %s: %s\n", log_ident, tags[level], msg);
    } else {
        /* Appended to, never followed through a link or truncated; a FIFO or
         * device planted there is refused (the line goes to stderr instead). */
        int fd = open(log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0600);
        struct stat sb;
        char line[1200], ts[32];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
        int n = snprintf(line, sizeof(line), "%s %s[%ld] %s: %s\n", ts, log_ident, (long)getpid(), tags[level], msg);
        if (n > (int)sizeof(line) - 1) { /* cut short: still a whole line */
            n = (int)sizeof(line) - 1;
            line[n - 1] = '\n';
        }
        if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (write(fd, line, (size_t)n) != n) {
                /* nowhere left to report it */
            }
        } else {
            fprintf(stderr, "%s: %s: %s (log file %s refused: not a regular file)\n", log_ident, tags[level], msg,
                    log_file);
        }
        if (fd >= 0)
            close(fd);
    }
    pthread_mutex_unlock(&log_lock);
    errno = saved;
}
