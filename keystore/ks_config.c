/* p11mk keystore: configuration lookup and parsing.
 *
 * One format for module and admin: "key = value" lines, '#' comments.
 * Errors name the file, the line and the key; there is never a silent
 * fallback to defaults once a config file has been chosen. */
#include "ks_internal.h"

#include <ctype.h>
#include <errno.h>
#include <pwd.h>

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SYSTEM_CONF "/etc/p11mk/p11mk.conf"
#define KNOWN_KEYS                                                                                             \
    "keystore, backend, master_key, log, log_level, key_file_mode, rsa_min_bits, wrap_policy, secure_heap, "      \
    "legacy_mechanisms, postgresql, host_name"

static const char *home_dir(void)
{
    const char *h = getenv("HOME");
    if (h && *h)
        return h;
    struct passwd *pw = getpwuid(getuid());
    return pw ? pw->pw_dir : "/";
}

static char *join(const char *a, const char *b)
{
    char *s = NULL;
    if (asprintf(&s, "%s/%s", a, b) < 0)
        return NULL;
    return s;
}

char *ks_default_keystore_dir(void)
{
    const char *x = getenv("XDG_DATA_HOME");
    char *base, *dir;
    if (x && x[0] == '/')
        return join(x, "p11mk");
    base = join(home_dir(), ".local/share");
    if (!base)
        return NULL;
    dir = join(base, "p11mk");
    free(base);
    return dir;
}

static char *user_config_path(void)
{
    const char *x = getenv("XDG_CONFIG_HOME");
    char *base, *p;
    if (x && x[0] == '/')
        return join(x, "p11mk/p11mk.conf");
    base = join(home_dir(), ".config");
    if (!base)
        return NULL;
    p = join(base, "p11mk/p11mk.conf");
    free(base);
    return p;
}

void ks_config_free(ks_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->source);
    free(cfg->keystore);
    free(cfg->master_key);
    free(cfg->log);
    free(cfg->backend);
    if (cfg->postgresql)
        OPENSSL_cleanse(cfg->postgresql, strlen(cfg->postgresql));
    free(cfg->postgresql);
    free(cfg->host_name);
    memset(cfg, 0, sizeof(*cfg));
}

void ks_config_defaults(ks_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->keystore = ks_default_keystore_dir();
    cfg->master_key = strdup("default");
    cfg->log = NULL;
    cfg->log_level = KS_LOG_WARN;
    cfg->key_file_mode = 0600;
    cfg->rsa_min_bits = 2048;
    cfg->secure_heap_kib = KS_SECURE_HEAP_DEFAULT_KIB;
}

static char *trim(char *s)
{
    char *e;
    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* The next line of a configuration file into *line (getline's buffer),
 * its length in *len, the newline kept. 1: a line; 0: the end; -1: a line
 * the format does not allow, *why says which (a NUL byte would cut the
 * line short where the reader looks and not where the file ends it, and a
 * line longer than CONF_LINE_MAX is refused rather than read in pieces),
 * or a read error (*why NULL, errno set). */
#define CONF_LINE_MAX 4094
static int next_line(FILE *f, char **line, size_t *cap, size_t *len, const char **why)
{
    errno = 0;
    ssize_t n = getline(line, cap, f);
    *why = NULL;
    if (n < 0)
        return ferror(f) ? -1 : 0;
    *len = (size_t)n;
    if (memchr(*line, '\0', *len))
        *why = "holds a NUL byte";
    else if (*len - ((*line)[*len - 1] == '\n') > CONF_LINE_MAX)
        *why = "is too long";
    return *why ? -1 : 1;
}

/* "~/x" -> $HOME/x; relative paths are relative to the config file's directory. */
static char *resolve_path(const char *val, const char *conf)
{
    if (val[0] == '~' && val[1] == '/')
        return join(home_dir(), val + 2);
    if (val[0] == '/')
        return strdup(val);
    const char *slash = strrchr(conf, '/');
    if (!slash)
        return strdup(val);
    char *dir = strndup(conf, (size_t)(slash - conf));
    char *p = dir ? join(*dir ? dir : "/", val) : NULL;
    free(dir);
    return p;
}

static int set_str(char **dst, char *v)
{
    if (!v)
        return KS_ENOMEM;
    free(*dst);
    *dst = v;
    return KS_OK;
}

/* A key that takes one of two words: *on when it is the second. */
static int either(const char *path, int line, const char *key, const char *val, const char *off, const char *yes,
                  bool *on, ks_err *err)
{
    if (strcmp(val, off) != 0 && strcmp(val, yes) != 0) {
        ks_err_set(err, "%s:%d: %s '%s' is not one of %s, %s", path, line, key, val, off, yes);
        return KS_ECONFIG;
    }
    *on = strcmp(val, yes) == 0;
    return KS_OK;
}

static int apply(ks_config *cfg, const char *path, int line, const char *key, const char *val, ks_err *err)
{
    if (!*val) {
        ks_err_set(err, "%s:%d: key '%s' has an empty value", path, line, key);
        return KS_ECONFIG;
    }
    if (strcmp(key, "keystore") == 0)
        return set_str(&cfg->keystore, resolve_path(val, path));
    if (strcmp(key, "backend") == 0) {
        if (!ks_backend_find(val)) {
            ks_err_set(err, "%s:%d: backend '%s' is not built in (this p11mk has: %s)", path, line, val,
                       ks_backend_names());
            return KS_ECONFIG;
        }
        return set_str(&cfg->backend, strdup(val));
    }
    if (strcmp(key, "host_name") == 0) {
        if (strlen(val) > 200 || strpbrk(val, " \t")) {
            ks_err_set(err, "%s:%d: host_name '%.60s' must be one word of at most 200 characters", path, line, val);
            return KS_ECONFIG;
        }
        return set_str(&cfg->host_name, strdup(val));
    }
    if (strcmp(key, "postgresql") == 0) /* a libpq connection string: never repeated in a message */
        return set_str(&cfg->postgresql, strdup(val));
    if (strcmp(key, "master_key") == 0)
        return set_str(&cfg->master_key, strcmp(val, "default") == 0 ? strdup(val) : resolve_path(val, path));
    if (strcmp(key, "log") == 0) {
        if (strcmp(val, "syslog") == 0 || strcmp(val, "stderr") == 0)
            return set_str(&cfg->log, strdup(val));
        char *lp = resolve_path(val, path);
        struct stat lsb;
        if (lp && lstat(lp, &lsb) == 0 && !S_ISREG(lsb.st_mode)) {
            ks_err_set(err, "%s:%d: log file %s is not a regular file (a directory, device, FIFO or link); name "
                            "a file, or syslog or stderr", path, line, lp);
            free(lp);
            return KS_ECONFIG;
        }
        return set_str(&cfg->log, lp);
    }
    if (strcmp(key, "log_level") == 0) {
        int l = ks_log_level_parse(val);
        if (l < 0) {
            ks_err_set(err, "%s:%d: log_level '%s' is not one of error, warn, info, debug", path, line, val);
            return KS_ECONFIG;
        }
        cfg->log_level = l;
        return KS_OK;
    }
    if (strcmp(key, "key_file_mode") == 0) {
        char *end;
        errno = 0;
        unsigned long m = strtoul(val, &end, 8);
        if (errno || *end || m > 0777 || (m & 0400) == 0) {
            ks_err_set(err, "%s:%d: key_file_mode '%s' must be an octal mode such as 0600 or 0640", path, line,
                       val);
            return KS_ECONFIG;
        }
        cfg->key_file_mode = (unsigned)m;
        return KS_OK;
    }
    if (strcmp(key, "wrap_policy") == 0)
        return either(path, line, key, val, "default", "strict", &cfg->wrap_strict, err);
    if (strcmp(key, "legacy_mechanisms") == 0)
        return either(path, line, key, val, "no", "yes", &cfg->legacy_mechanisms, err);
    if (strcmp(key, "rsa_min_bits") == 0) {
        char *end;
        errno = 0;
        unsigned long b = strtoul(val, &end, 10);
        if (errno || *end || !*val || b < 1024 || b > 8192 || b % 8) {
            ks_err_set(err, "%s:%d: rsa_min_bits '%s' must be a number of bits from 1024 to 8192 (default 2048)",
                       path, line, val);
            return KS_ECONFIG;
        }
        cfg->rsa_min_bits = (unsigned)b;
        return KS_OK;
    }
    if (strcmp(key, "secure_heap") == 0) {
        char *end;
        errno = 0;
        unsigned long k = strtoul(val, &end, 10);
        if (errno || *end || !*val || (k != 0 && (k < 64 || k > 65536 || (k & (k - 1)) != 0))) {
            ks_err_set(err,
                       "%s:%d: secure_heap '%s' must be 0 (leave OpenSSL's secure heap alone) or a power of two "
                       "of KiB from 64 to 65536 (default %u)",
                       path, line, val, KS_SECURE_HEAP_DEFAULT_KIB);
            return KS_ECONFIG;
        }
        cfg->secure_heap_kib = (unsigned)k;
        return KS_OK;
    }
    ks_err_set(err, "%s:%d: unknown key '%s' (known keys: " KNOWN_KEYS ")", path, line, key);
    return KS_ECONFIG;
}

static int config_load_file_impl(ks_config *cfg, const char *path, ks_err *err)
{
    FILE *f;
    char *buf = NULL;
    size_t cap = 0, l;
    const char *why;
    int lineno = 0, rc = KS_OK, seen[16] = {0}, got;

    ks_config_defaults(cfg);
    if (!cfg->keystore || !cfg->master_key) {
        ks_config_free(cfg);
        return KS_ENOMEM;
    }
    /* Not blocking on a FIFO, not following a link planted in its place. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || !(f = fdopen(fd, "r"))) {
        int e = errno;
        if (fd >= 0 && fstat(fd, &sb) == 0 && !S_ISREG(sb.st_mode))
            ks_err_set(err, "configuration file %s is not a regular file", path);
        else if (e == ELOOP)
            ks_err_set(err, "configuration file %s is a symbolic link; name the file itself (P11MK_CONF) or "
                            "replace the link with the file", path);
        else
            ks_err_set(err, "cannot read configuration file %s: %s", path, strerror(e));
        if (fd >= 0)
            close(fd);
        ks_config_free(cfg);
        return KS_ECONFIG;
    }
    /* It decides which key and keystore are used: only its owner (this user
     * or root) may be able to change it. */
    if ((sb.st_mode & 022) || (sb.st_uid != geteuid() && sb.st_uid != 0)) {
        ks_err_set(err, "configuration file %s %s; it decides which master key and keystore are used: run "
                        "chmod go-w %s (and make it yours or root's)", path,
                   (sb.st_mode & 022) ? "is writable by other users" : "belongs to another user", path);
        fclose(f);
        ks_config_free(cfg);
        return KS_ECONFIG;
    }
    cfg->source = strdup(path);
    while (rc == KS_OK && (got = next_line(f, &buf, &cap, &l, &why)) != 0) {
        lineno++;
        if (got < 0) {
            if (why)
                ks_err_set(err, "%s:%d: the line %s; a configuration line is text of at most %d characters", path,
                           lineno, why, CONF_LINE_MAX);
            else
                ks_err_set(err, "error reading %s: %s", path, strerror(errno));
            rc = KS_ECONFIG;
            break;
        }
        char *hash = strchr(buf, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(buf);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            ks_err_set(err, "%s:%d: expected 'key = value', got '%.60s'", path, lineno, s);
            rc = KS_ECONFIG;
            break;
        }
        *eq = '\0';
        const char *key = trim(s);
        static const char *const known[] = {"keystore",     "master_key",  "log",         "log_level",
                                            "key_file_mode", "rsa_min_bits", "wrap_policy", "secure_heap",
                                            "legacy_mechanisms", "backend", "postgresql", "host_name"};
        for (unsigned i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            if (strcmp(key, known[i]) == 0) {
                if (seen[i]) {
                    ks_err_set(err, "%s:%d: key '%s' is set twice (first on line %d); keep one", path, lineno, key,
                               seen[i]);
                    rc = KS_ECONFIG;
                }
                seen[i] = lineno;
            }
        if (rc == KS_OK)
            rc = apply(cfg, path, lineno, key, trim(eq + 1), err);
    }
    /* A database password in a file others may read is a password given away. */
    if (rc == KS_OK && cfg->postgresql && strstr(cfg->postgresql, "password") && (sb.st_mode & 044)) {
        ks_err_set(err, "%s: the postgresql connection string holds a password and the file is readable by other "
                        "users; move the password to ~/.pgpass (or a service file), or run chmod go-r %s", path,
                   path);
        rc = KS_ECONFIG;
    }
    if (rc == KS_OK && cfg->backend && strcmp(cfg->backend, "postgresql") == 0 && !cfg->postgresql) {
        ks_err_set(err, "%s: backend = postgresql needs postgresql = <libpq connection string> (for example "
                        "postgresql = host=db.example dbname=p11mk)", path);
        rc = KS_ECONFIG;
    }
    fclose(f);
    OPENSSL_clear_free(buf, cap); /* a postgresql line may hold a password */
    if (rc == KS_OK && !cfg->source)
        rc = KS_ENOMEM;
    if (rc != KS_OK)
        ks_config_free(cfg);
    return rc;
}

static int config_load_impl(ks_config *cfg, ks_err *err)
{
    const char *env = getenv("P11MK_CONF");
    char *user;
    int rc;

    if (env && *env)
        return ks_config_load_file(cfg, env, err);
    user = user_config_path();
    if (user && access(user, F_OK) == 0) {
        rc = ks_config_load_file(cfg, user, err);
        free(user);
        return rc;
    }
    free(user);
    if (access(SYSTEM_CONF, F_OK) == 0)
        return ks_config_load_file(cfg, SYSTEM_CONF, err);
    ks_config_defaults(cfg);
    if (!cfg->keystore || !cfg->master_key) {
        ks_config_free(cfg);
        return KS_ENOMEM;
    }
    return KS_OK;
}

char *ks_user_config_path(void) { return user_config_path(); }

char *ks_config_home(const ks_config *cfg)
{
    return cfg && cfg->source ? strdup(cfg->source) : user_config_path();
}

static int config_write_master_key_impl(const char *conf, const char *keyfile, const char *keystore, ks_err *err)
{
    char tmp[4200], *line = NULL;
    size_t cap = 0, len;
    const char *why = NULL;
    struct stat sb;
    bool exists = stat(conf, &sb) == 0, done = false;
    FILE *in = NULL, *out;
    int fd;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp", conf) >= (int)sizeof(tmp))
        return KS_EINVAL;
    if (exists && !(in = fopen(conf, "re"))) {
        ks_err_set(err, "cannot read configuration %s: %s", conf, strerror(errno));
        return KS_ECONFIG;
    }
    if (!exists && ks_mkdir_p(conf, false) != 0) {
        ks_err_set(err, "cannot create the directory of %s: %s", conf, strerror(errno));
        return KS_EIO;
    }
    (void)unlink(tmp); /* left by a writer that was killed; we hold the lifecycle lock */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, exists ? (sb.st_mode & 0666) : 0600);
    if (fd < 0 || !(out = fdopen(fd, "w"))) {
        ks_err_set(err, "cannot write configuration %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        if (in)
            fclose(in);
        return KS_EIO;
    }
    if (exists && geteuid() == 0)
        (void)fchown(fd, sb.st_uid, sb.st_gid);
    if (!exists)
        fprintf(out, "# written by p11mk-admin\nkeystore = %s\n", keystore);
    /* Lines are copied as they are: one the loader would refuse stops the
     * write (the file changed since it was loaded). */
    int got = 0;
    while (in && (got = next_line(in, &line, &cap, &len, &why)) > 0) {
        const char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (strncmp(p, "master_key", 10) == 0 && (isspace((unsigned char)p[10]) || p[10] == '=')) {
            if (!done)
                fprintf(out, "master_key = %s\n", keyfile);
            done = true;
            continue;
        }
        fwrite(line, 1, len, out);
        if (line[len - 1] != '\n')
            fputc('\n', out);
    }
    OPENSSL_clear_free(line, cap);
    if (!done)
        fprintf(out, "master_key = %s\n", keyfile);
    bool bad = got < 0 || fflush(out) != 0 || fsync(fileno(out)) != 0;
    if (in)
        fclose(in);
    bad = fclose(out) != 0 || bad;
    if (why) {
        ks_err_set(err, "configuration %s has a line that %s (changed since it was read?); it is unchanged: "
                        "fix the line and run the command again", conf, why);
        unlink(tmp);
        return KS_ECONFIG;
    }
    if (bad || rename(tmp, conf) != 0) {
        ks_err_set(err, "cannot write configuration %s: %s; it is unchanged", conf, strerror(errno));
        unlink(tmp);
        return KS_EIO;
    }
    return KS_OK;
}

int ks_config_load_file(ks_config *cfg, const char *path, ks_err *err)
{
    return ks_err_in(err, KS_AREA_CONFIG, config_load_file_impl(cfg, path, err));
}

int ks_config_load(ks_config *cfg, ks_err *err)
{
    return ks_err_in(err, KS_AREA_CONFIG, config_load_impl(cfg, err));
}

int ks_config_write_master_key(const char *conf, const char *keyfile, const char *keystore, ks_err *err)
{
    return ks_err_in(err, KS_AREA_CONFIG, config_write_master_key_impl(conf, keyfile, keystore, err));
}
