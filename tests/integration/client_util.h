/* Shared by the test clients (rot_client, pin_race): finding a token. */
#ifndef P11MK_CLIENT_UTIL_H
#define P11MK_CLIENT_UTIL_H

#include <stdio.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

/* The slot of the token labeled label; 0 (and a message naming who asked)
 * when there is none or the slot list cannot be read. */
static inline CK_SLOT_ID client_find_slot(CK_FUNCTION_LIST *fl, const char *who, const char *label)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_UTF8CHAR want[32];
    CK_RV rv = fl->C_GetSlotList(CK_TRUE, slots, &n);

    if (rv != CKR_OK) {
        fprintf(stderr, "%s: C_GetSlotList failed: 0x%lx\n", who, (unsigned long)rv);
        return 0;
    }
    memset(want, ' ', sizeof(want));
    memcpy(want, label, strlen(label) < 32 ? strlen(label) : 32);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0)
            return slots[i];
    }
    fprintf(stderr, "%s: no token labeled %s\n", who, label);
    return 0;
}

#endif
