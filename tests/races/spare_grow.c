/* The map grows (keystore/ks_lmdb.c: resize_lock takes `resize` and the 16
 * commit_seq shards) while worker threads keep signing on spare operations
 * (every init reads ks_commit_seq under its thread's shard) and another
 * process grows the map too (adopt_resize in this one). Each MAC must be
 * OpenSSL's; the key changed in the other process must be seen; no
 * deadlock (the test's own alarm). Exits 1 on a violation. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include <openssl/evp.h>
#include <openssl/core_names.h>

enum { WORKERS = 3 };
static _Atomic int stop, bad, ops, changed, started;
static CK_OBJECT_HANDLE hk;
static const uint8_t hv[32] = "an hmac key of thirty-two bytes";
static uint8_t want[32];

static void *worker(void *arg)
{
    (void)arg;
    CK_SESSION_HANDLE s;
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    started++;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
    while (!stop) {
        CK_BYTE mac[32];
        CK_ULONG ml = sizeof(mac);
        int was = changed; /* read before the init: a change made before must be seen */
        CK_RV rv = f->C_SignInit(s, &m, hk);
        if (was && rv == CKR_OK) {
            fprintf(stderr, "worker: C_SignInit succeeded after CKA_SIGN went false\n");
            bad = 1;
        }
        if (rv == CKR_OK)
            rv = f->C_Sign(s, (CK_BYTE_PTR) "grow", 4, mac, &ml);
        if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
            continue;
        if (rv != CKR_OK || ml != 32 || memcmp(mac, want, 32) != 0) {
            fprintf(stderr, "worker: 0x%lx or a wrong MAC\n", rv);
            bad = 1;
        }
        ops++;
    }
    f->C_CloseSession(s);
    return NULL;
}

static void grow(CK_SESSION_HANDLE s, int n, size_t size, const char *tag)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    uint8_t *v = malloc(size);
    memset(v, tag[0], size);
    for (int i = 0; i < n && !bad; i++) {
        CK_OBJECT_HANDLE o;
        CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, (void *)tag, strlen(tag)},
                            {CKA_VALUE, v, size}};
        v[0] = (uint8_t)i;
        CHECK(f->C_CreateObject(s, a, 4, &o));
    }
    free(v);
}

int main(void)
{
    pthread_t th[WORKERS];
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    size_t n = 0;
    alarm(120);
    EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, hv, 32, (const unsigned char *)"grow", 4, want, 32, &n);
    setenv("P11MK_MAPSIZE_INIT", "1048576", 1); /* 1 MiB: many growths */
    setup();
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, (void *)hv, 32},
                        {CKA_TOKEN, &yes, 1},         {CKA_SIGN, &yes, 1}};
    CHECK(f->C_CreateObject(h, a, 5, &hk));
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    fflush(NULL);
    /* The fork after the workers run (their first call may be under way):
     * a thread that is still starting may hold AddressSanitizer's allocator
     * lock (GCC's libasan takes none at fork), which a child would wait on
     * for ever; a call inside the module holds nothing a child inherits. */
    while (started < WORKERS) {}
    pid_t pid = fork();
    if (pid == 0) { /* another process: grows the map too */
        CK_SESSION_HANDLE s;
        CHECK(f->C_Initialize(NULL));
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
        grow(s, 40, 512 * 1024, "child");
        _exit(0);
    }
    grow(h, 40, 512 * 1024, "parent");
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "the child failed\n");
        bad = 1;
    }
    /* the key changed after the growth: the workers' next inits see it */
    CK_ATTRIBUTE off = {CKA_SIGN, &no, 1};
    CHECK(f->C_SetAttributeValue(h, hk, &off, 1));
    changed = 1;
    usleep(200000);
    stop = 1;
    for (int i = 0; i < WORKERS; i++)
        pthread_join(th[i], NULL);
    printf("spare grow: %d signatures, %s\n", (int)ops, bad ? "VIOLATION" : "all held");
    teardown();
    return bad ? 1 : 0;
}
