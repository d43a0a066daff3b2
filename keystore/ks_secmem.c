/* p11mk keystore: memory for secrets.
 *
 * Master keys, registers, token keys and unsealed key material (attribute
 * values such as CKA_VALUE, the key cache's secret bytes) live in pages that
 * are excluded from core dumps (MADV_DONTDUMP) and locked against swap (mlock)
 * where RLIMIT_MEMLOCK allows; locking degrades gracefully, the dump
 * exclusion does not depend on any limit. Freeing cleanses.
 *
 * Small requests (up to 2 KiB) come from a pool: 64 KiB chunks split into
 * slots of one size class each, kept on per-class free lists, so that a key
 * cache of thousands of AES keys costs thousands of slots, not thousands of
 * pages. Chunks are never returned to the system (a freed slot is cleansed
 * and reused). Larger requests get pages of their own.
 *
 * Every block starts with a 16-byte header (which keeps the caller's pointer
 * 16-byte aligned): a magic number, the class (or LARGE) and the mapping's
 * size. A fork child inherits the pool and the dump exclusion (mlock is not
 * inherited); no allocation may be in flight in another thread at the fork
 * (the module's fork gate, pkcs11/p11_state.c, sees to it: a handler of our
 * own here would run before the gate's and deadlock against a call that
 * holds the gate and waits for the pool). */
#include "ks_internal.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define HDR 16
#define MAGIC 0x5ec3e3a1u
#define LARGE 0xffffffffu
#define CHUNK (64u * 1024u)
#define NCLASS 7 /* 32 64 128 256 512 1024 2048 */

typedef struct {
    uint32_t magic;
    uint32_t cls;
    size_t total; /* LARGE: the mapping's size; a slot: its size with the header */
} blk_hdr;
_Static_assert(sizeof(blk_hdr) <= HDR, "the block header fits its space");

typedef struct free_slot {
    struct free_slot *next;
} free_slot;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static free_slot *free_lists[NCLASS];

static size_t page_round(size_t n)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t p = pg > 0 ? (size_t)pg : 4096;
    return (n + p - 1) / p * p;
}

static void *map_secret(size_t total)
{
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    (void)madvise(base, total, MADV_DONTDUMP);
    (void)mlock(base, total); /* best effort: RLIMIT_MEMLOCK may be small */
    return base;
}

static int class_of(size_t n)
{
    size_t sz = 32;
    for (int c = 0; c < NCLASS; c++, sz <<= 1)
        if (n <= sz)
            return c;
    return -1;
}

/* Carve a new chunk into slots of class c; called with pool_lock held. */
static int grow_locked(int c)
{
    size_t slot = ((size_t)32 << c) + HDR;
    uint8_t *chunk = map_secret(CHUNK);
    if (!chunk)
        return -1;
    for (size_t off = 0; off + slot <= CHUNK; off += slot) {
        free_slot *f = (free_slot *)(chunk + off);
        f->next = free_lists[c];
        free_lists[c] = f;
    }
    return 0;
}

void *ks_secmem_alloc(size_t n)
{
    blk_hdr h = {MAGIC, LARGE, 0};
    uint8_t *base;
    int c = class_of(n);

    if (c >= 0) {
        pthread_mutex_lock(&pool_lock);
        if (!free_lists[c] && grow_locked(c) != 0) {
            pthread_mutex_unlock(&pool_lock);
            return NULL;
        }
        base = (uint8_t *)free_lists[c];
        free_lists[c] = free_lists[c]->next;
        pthread_mutex_unlock(&pool_lock);
        h.cls = (uint32_t)c;
        h.total = ((size_t)32 << c) + HDR;
        memset(base, 0, h.total);
    } else {
        if (n > SIZE_MAX - HDR - 65536)
            return NULL;
        h.total = page_round(n + HDR);
        if (!(base = map_secret(h.total)))
            return NULL;
    }
    memcpy(base, &h, sizeof(h));
    return base + HDR;
}

void ks_secmem_free(void *p)
{
    if (!p)
        return;
    uint8_t *base = (uint8_t *)p - HDR;
    blk_hdr h;
    memcpy(&h, base, sizeof(h));
    if (h.magic != MAGIC)
        abort(); /* not ours, or a corrupted header: stop before freeing a stranger's memory */
    OPENSSL_cleanse(base, h.total);
    if (h.cls == LARGE) {
        (void)munlock(base, h.total);
        munmap(base, h.total);
        return;
    }
    if (h.cls >= NCLASS)
        abort();
    pthread_mutex_lock(&pool_lock);
    free_slot *f = (free_slot *)base;
    f->next = free_lists[h.cls];
    free_lists[h.cls] = f;
    pthread_mutex_unlock(&pool_lock);
}

/* ---- OpenSSL's secure heap ------------------------------------------------
 * OpenSSL keeps the private numbers of EC keys, the private keys of
 * Ed25519/X25519, HMAC keys and EC signing's temporaries in
 * its secure heap when one exists (mmap'd, MADV_DONTDUMP, mlock'd where the
 * limit allows, guard pages). It is process-wide: the module sets one up only
 * when the application has not, and never tears it down (OpenSSL objects of
 * the application may live in it). When it is full, OpenSSL's allocations
 * fail rather than fall back, so the key cache lets go at half (see
 * ks_secure_heap_pressed). What stays outside: AES key schedules while an
 * operation runs (cleansed when it ends) and RSA private keys (OpenSSL 3.0
 * imports them into ordinary big numbers and keeps Montgomery copies of the
 * primes; README, threat model).
 *
 * Off unless the configuration asks (secure_heap): the secure heap has one
 * lock (OpenSSL's sec_malloc_lock, taken by every secure allocation, EC
 * signing and DRBG seeding among them) and OpenSSL does not reset it in a
 * fork() child. A child forked while another thread of the parent held it
 * waits forever at its first secure allocation, even after C_Initialize; no
 * pthread_atfork handler of ours can take a lock OpenSSL keeps private. So
 * it is for processes that do not fork while other threads run OpenSSL. */
static size_t sh_size; /* the size the module set up; 0 if it did not */
static pthread_mutex_t sh_lock = PTHREAD_MUTEX_INITIALIZER;

bool ks_secure_heap_init(const ks_config *cfg)
{
    bool have;

#ifdef __SANITIZE_ADDRESS__
    /* AddressSanitizer neither checks accesses inside OpenSSL's arena nor
     * scans it for pointers (objects referenced only from there would show
     * as leaks): a sanitizer build leaves OpenSSL's allocations in its view. */
    (void)cfg;
    return CRYPTO_secure_malloc_initialized() != 0;
#endif
    pthread_mutex_lock(&sh_lock);
    if (!CRYPTO_secure_malloc_initialized() && cfg && cfg->secure_heap_kib) {
        size_t size = (size_t)cfg->secure_heap_kib * 1024;
        int rc = CRYPTO_secure_malloc_init(size, 32);
        if (rc != 0)
            __atomic_store_n(&sh_size, size, __ATOMIC_RELEASE);
        if (rc == 2)
            ks_log(KS_LOG_INFO, "OpenSSL's secure heap (%zu KiB) is not locked in memory: RLIMIT_MEMLOCK is too "
                                "small; it is still kept out of core dumps", size / 1024);
        else if (rc == 0)
            ks_log(KS_LOG_WARN, "OpenSSL's secure heap could not be set up: private keys are kept in ordinary "
                                "memory, which a core dump can contain");
    }
    have = CRYPTO_secure_malloc_initialized() != 0;
    pthread_mutex_unlock(&sh_lock);
    return have;
}

bool ks_secure_heap_pressed(void)
{
    size_t size = __atomic_load_n(&sh_size, __ATOMIC_ACQUIRE);
    return size && CRYPTO_secure_used() > size / 2;
}
