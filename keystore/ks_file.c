/* p11mk keystore: small file-system helpers shared by the keystore and the
 * admin (directories made private, renames made durable). */
#include "ks_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int ks_mkdir_p(const char *path, bool last)
{
    char *p = strdup(path);
    int rc = 0;
    if (!p)
        return -1;
    /* Parents may fail (EACCES on a directory that exists but cannot be
     * listed); only the last mkdir decides, and its errno is kept. */
    char *end = last ? NULL : strrchr(p, '/');
    if (end)
        *end = '\0';
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        (void)mkdir(p, 0700);
        *s = '/';
    }
    if ((last || end) && *p && mkdir(p, 0700) != 0 && errno != EEXIST)
        rc = -1;
    free(p);
    return rc;
}

void ks_fsync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
}

void ks_dirname(const char *path, char *dir, size_t n)
{
    snprintf(dir, n, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, n, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
}

void ks_fsync_parent(const char *path)
{
    char dir[4096];
    ks_dirname(path, dir, sizeof(dir));
    ks_fsync_dir(dir);
}
