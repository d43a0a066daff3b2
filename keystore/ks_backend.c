/* p11mk keystore: the storage backends built in, by name (p11mk.conf's
 * backend =). */
#include "ks_internal.h"

#include <string.h>

static const ks_backend_ops *const backends[] = {&ks_lmdb_backend};

const ks_backend_ops *ks_backend_find(const char *name)
{
    for (size_t i = 0; name && i < sizeof(backends) / sizeof(backends[0]); i++)
        if (strcmp(name, backends[i]->name) == 0)
            return backends[i];
    return NULL;
}

const char *ks_backend_names(void)
{
    return "lmdb"; /* the names in backends[], comma-separated */
}
