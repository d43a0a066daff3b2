/* Shared by the unit tests that drive the module through its entry points:
 * a configuration for a keystore in a test directory, and C_Initialize
 * then a new token on the free slot (listed last; it keeps its id once
 * initialized) with a user PIN, and a read/write session logged in as that
 * user. */
#ifndef P11MK_TEST_SESSION_H
#define P11MK_TEST_SESSION_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "tests/unit/test_pg.h"

/* DIR/p11mk.conf for the keystore DIR/KS, logging to DIR/p11mk.log, with
 * the extra lines, named by P11MK_CONF; 0, or -1. With P11MK_TEST_PG_DIR
 * set, the keystore is on the postgresql backend, in a database of its own
 * (test_pg.h). */
static inline int test_conf(const char *dir, const char *ks, const char *extra)
{
    char conf[256], path[256], pg[768];
    FILE *c;

    snprintf(conf, sizeof(conf), "%s/p11mk.conf", dir);
    snprintf(path, sizeof(path), "%s/%s", dir, ks);
    if (test_pg_backend_lines(path, pg, sizeof(pg)) != 0)
        return -1;
    if (!(c = fopen(conf, "w")))
        return -1;
    fprintf(c, "keystore = %s\nlog = %s/p11mk.log\nlog_level = info\n%s%s", path, dir, extra, pg);
    fclose(c);
    return setenv("P11MK_CONF", conf, 1);
}

/* 0, or -1 when any step fails. */
static inline int test_user_session(CK_FUNCTION_LIST *f, const char *label, const char *so, const char *pin,
                                    CK_SLOT_ID *slot, CK_SESSION_HANDLE *h)
{
    CK_SLOT_ID slots[8];
    CK_ULONG ns = 8;
    CK_UTF8CHAR lab[32];

    memset(lab, ' ', sizeof(lab));
    memcpy(lab, label, strlen(label) < sizeof(lab) ? strlen(label) : sizeof(lab));
    if (f->C_Initialize(NULL) != CKR_OK || f->C_GetSlotList(CK_FALSE, slots, &ns) != CKR_OK || ns == 0)
        return -1;
    *slot = slots[ns - 1];
    if (f->C_InitToken(*slot, (CK_UTF8CHAR_PTR)so, strlen(so), lab) != CKR_OK ||
        f->C_OpenSession(*slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, h) != CKR_OK ||
        f->C_Login(*h, CKU_SO, (CK_UTF8CHAR_PTR)so, strlen(so)) != CKR_OK ||
        f->C_InitPIN(*h, (CK_UTF8CHAR_PTR)pin, strlen(pin)) != CKR_OK || f->C_Logout(*h) != CKR_OK ||
        f->C_Login(*h, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)) != CKR_OK)
        return -1;
    return 0;
}

#endif
