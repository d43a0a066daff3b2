/* Shared by the unit tests that find slots by their token's label. Include
 * after the test's own `static CK_FUNCTION_LIST *f`. */
#ifndef P11MK_TEST_SLOTS_H
#define P11MK_TEST_SLOTS_H

#include <stdbool.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

/* A token label: blank padded to 32 bytes. */
static inline void pad32(CK_UTF8CHAR out[32], const char *s)
{
    memset(out, ' ', 32);
    memcpy(out, s, strlen(s));
}

/* The slot of the token with this label, or the free slot when label is
 * NULL; (CK_SLOT_ID)-1 when there is none (or the slots cannot be read). */
static inline CK_SLOT_ID slot_of(const char *label)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_UTF8CHAR want[32];
    if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return (CK_SLOT_ID)-1;
    if (label)
        pad32(want, label);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        bool init = ti.flags & CKF_TOKEN_INITIALIZED;
        if (!label && !init)
            return slots[i];
        if (label && init && memcmp(ti.label, want, 32) == 0)
            return slots[i];
    }
    return (CK_SLOT_ID)-1;
}

#endif
