/* Fuzz target: the configuration file parser (ks_config_load_file) and the
 * master-key registers file parser (ks_reg_load).
 *
 * Byte 0 picks the file mode and the allowed key-file mode; the rest is
 * written to a configuration file and to a key file (fresh temporary files
 * in a private directory) and both are loaded. Neither may crash; a failure
 * must come with an explanation in ks_err; a success must yield a usable
 * result. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keystore/ks.h"
#include "fuzz_common.h"

#define CHECK(c)                                                                                                   \
    do {                                                                                                           \
        if (!(c)) {                                                                                                \
            fprintf(stderr, "fuzz_config: check failed at line %d: %s\n", __LINE__, #c);                          \
            abort();                                                                                               \
        }                                                                                                          \
    } while (0)

static char dir[256], conf_path[300], key_path[300];

static void cleanup(void)
{
    unlink(conf_path);
    unlink(key_path);
    rmdir(dir);
}

static void setup(void)
{
    const char *t = getenv("TMPDIR");
    if (dir[0])
        return;
    /* Every input writes two files: a memory file system when there is one. */
    if (!t || !*t)
        t = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof(dir), "%s/p11mk-fuzz-config-XXXXXX", t);
    CHECK(mkdtemp(dir) != NULL);
    snprintf(conf_path, sizeof(conf_path), "%s/p11mk.conf", dir);
    snprintf(key_path, sizeof(key_path), "%s/master.key", dir);
    /* Relative paths in a configuration resolve against its directory; "~/"
     * against $HOME: keep both inside the private directory. */
    setenv("HOME", dir, 1);
    atexit(cleanup);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setup();
    return 0;
}

static void write_file(const char *path, const uint8_t *d, size_t n, mode_t mode)
{
    int fd;
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK(fchmod(fd, mode) == 0);
    CHECK(n == 0 || write(fd, d, n) == (ssize_t)n);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const mode_t modes[] = {0600, 0400, 0640, 0644, 0700, 0660, 0604, 0000};
    static const unsigned allowed[] = {0600, 0, 0640, 0644, 0400, 0777};
    uint8_t ctl = size ? data[0] : 0;
    const uint8_t *body = size ? data + 1 : data;
    size_t n = size ? size - 1 : 0;
    mode_t mode = modes[ctl & 7];
    unsigned allow = allowed[(ctl >> 3) % 6];
    ks_config cfg;
    ks_registers r;
    ks_err err;
    int rc;

    setup();

    /* Configuration. */
    write_file(conf_path, body, n, 0600);
    memset(&cfg, 0x5a, sizeof(cfg));
    err.msg[0] = '\0';
    rc = ks_config_load_file(&cfg, conf_path, &err);
    if (rc == KS_OK) {
        CHECK(cfg.source && strcmp(cfg.source, conf_path) == 0);
        CHECK(cfg.keystore && cfg.keystore[0]);
        CHECK(cfg.master_key && cfg.master_key[0]);
        CHECK(cfg.log_level >= KS_LOG_ERROR && cfg.log_level <= KS_LOG_DEBUG);
        CHECK(cfg.key_file_mode <= 0777 && (cfg.key_file_mode & 0400));
        /* A master key named by the configuration: exercised through ks_mkey_load
         * only when it is the key file this target writes (never a real path). */
        ks_config_free(&cfg);
    } else {
        CHECK(rc == KS_ECONFIG || rc == KS_ENOMEM);
        CHECK(rc == KS_ENOMEM || err.msg[0] != '\0');
        /* ks_config_free after a failure is harmless (the loader already freed). */
        CHECK(cfg.source == NULL && cfg.keystore == NULL && cfg.master_key == NULL && cfg.log == NULL);
        ks_config_free(&cfg);
    }

    /* Registers (key) file. */
    write_file(key_path, body, n, mode);
    memset(&r, 0x5a, sizeof(r));
    err.msg[0] = '\0';
    rc = ks_reg_load(key_path, allow, &r, &err);
    if (rc == KS_OK) {
        unsigned eff = allow ? allow : 0600;
        CHECK(((unsigned)mode & 0777 & ~(eff & 0777)) == 0);
        CHECK(r.n_old <= r.cap_old);
        CHECK(strcmp(r.current.source, key_path) == 0);
        /* A file that loads must save and load back to the same registers. */
        ks_registers back;
        char saved[320];
        snprintf(saved, sizeof(saved), "%s.saved", key_path);
        CHECK(ks_reg_save(saved, &r, &err) == KS_OK);
        CHECK(ks_reg_load(saved, 0600, &back, &err) == KS_OK);
        CHECK(memcmp(back.current.key, r.current.key, KS_MK_LEN) == 0);
        CHECK(back.has_new == r.has_new && (!r.has_new || memcmp(back.staged.key, r.staged.key, KS_MK_LEN) == 0));
        CHECK(back.n_old == r.n_old);
        for (size_t i = 0; i < r.n_old; i++)
            CHECK(memcmp(back.old[i].key, r.old[i].key, KS_MK_LEN) == 0 && back.old[i].epoch == r.old[i].epoch &&
                  back.old[i].retired == r.old[i].retired && back.old[i].aborted == r.old[i].aborted &&
                  memcmp(back.old[i].kcv, r.old[i].kcv, KS_KCV_LEN) == 0);
        ks_reg_clear(&back);
        unlink(saved);
    } else {
        CHECK(rc == KS_EINVAL || rc == KS_EPERM || rc == KS_ENOTFOUND);
        CHECK(err.msg[0] != '\0');
    }
    ks_reg_clear(&r);
    return 0;
}
