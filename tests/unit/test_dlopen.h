/* Shared by the unit tests that load the built module with dlopen, as an
 * application would: the module ($P11MK_MODULE) and a temporary directory
 * for the group, and the names every such test uses. test_module.h builds
 * its fresh keystore per test on this; test_p11.h its keystore per group.
 * Include after cmocka.h. */
#ifndef P11MK_TEST_DLOPEN_H
#define P11MK_TEST_DLOPEN_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include <p11-kit/pkcs11.h>

#include "tests/unit/ks_test_util.h"

#define CK(call) assert_int_equal((call), CKR_OK)
#define RV(want, call) assert_int_equal((call), (want))

static void *dl;
static CK_FUNCTION_LIST *f;
static char tmp[64];
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static const char SO[] = "so-secret", PIN[] = "user-pin";

/* The module ($P11MK_MODULE): f. */
static inline int load_module(void)
{
    const char *mod = getenv("P11MK_MODULE");
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);

    dl = dlopen(mod ? mod : "pkcs11/p11mk-pkcs11.so", RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return -1;
    }
    gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(dl, "C_GetFunctionList");
    return gfl && gfl(&f) == CKR_OK ? 0 : -1;
}

/* The module and a temporary directory, for the group. */
static inline int group_setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/p11mk-test-XXXXXX");
    return mkdtemp(tmp) ? load_module() : -1;
}

static inline int group_teardown(void **state)
{
    (void)state;
    rm_rf(tmp);
    return 0;
}

#endif
