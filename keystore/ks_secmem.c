/* p11mk keystore: memory for secrets.
 *
 * Master keys, registers and unsealed key material live in pages that are
 * excluded from core dumps (MADV_DONTDUMP) and locked against swap (mlock)
 * where RLIMIT_MEMLOCK allows; locking degrades gracefully, the dump
 * exclusion does not depend on any limit. Freeing cleanses. */
#include "keystore/ks_internal.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define HDR 16 /* keeps the caller's pointer 16-byte aligned */

static size_t page_round(size_t n)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t p = pg > 0 ? (size_t)pg : 4096;
    return (n + p - 1) / p * p;
}

void *ks_secmem_alloc(size_t n)
{
    if (n > SIZE_MAX - HDR - 65536)
        return NULL;
    size_t total = page_round(n + HDR);
    uint8_t *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    (void)madvise(base, total, MADV_DONTDUMP);
    (void)mlock(base, total); /* best effort: RLIMIT_MEMLOCK may be small */
    memcpy(base, &total, sizeof(total));
    return base + HDR;
}

void ks_secmem_free(void *p)
{
    if (!p)
        return;
    uint8_t *base = (uint8_t *)p - HDR;
    size_t total;
    memcpy(&total, base, sizeof(total));
    OPENSSL_cleanse(base, total);
    (void)munlock(base, total);
    munmap(base, total);
}
