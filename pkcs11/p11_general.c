/* p11mk pkcs11 layer: library initialization, finalization, info. */
#include "pkcs11/p11_internal.h"

#include <pthread.h>
#include <unistd.h>

static struct {
    bool initialized; /* read and written atomically: see p11_initialized */
    pid_t pid;
    tok_ctx *tok;
    p11_mutex *lock;
} g;

/* C_Initialize/C_Finalize themselves are serialized by a process mutex. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* Any thread may ask while another runs C_Initialize (pkcs11-tool's thread
 * tests do): the flag is published with release after every other field is
 * set, and read with acquire. */
static void set_initialized(bool v) { __atomic_store_n(&g.initialized, v, __ATOMIC_RELEASE); }
static bool get_initialized(void) { return __atomic_load_n(&g.initialized, __ATOMIC_ACQUIRE); }
bool p11_initialized(void) { return get_initialized() && g.pid == getpid(); }
tok_ctx *p11_tok(void) { return g.tok; }
void p11_lock(void) { p11_mutex_lock(g.lock); }
void p11_unlock(void) { p11_mutex_unlock(g.lock); }

/* In a fork child, the parent's state is abandoned: its sessions and login
 * state do not carry over (PKCS#11 2.40 section 6.7.7), and the keystore
 * layer opens a fresh environment. Memory that is ours is freed. */
static void forget_parent(void)
{
    p11_sessions_free(true);
    g.tok = NULL; /* abandoned with its session objects: the keystore layer handles the child's reopen */
    g.lock = NULL;
    set_initialized(false);
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    CK_RV rv;

    pthread_mutex_lock(&init_lock);
    if (get_initialized() && g.pid != getpid())
        forget_parent();
    if (get_initialized()) {
        pthread_mutex_unlock(&init_lock);
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    rv = p11_locking_setup(pInitArgs);
    if (rv == CKR_OK)
        rv = p11_mutex_new(&g.lock);
    if (rv == CKR_OK) {
        rv = tok_ctx_open(TOK_CTX_CREATE, &g.tok);
        if (rv != CKR_OK) {
            p11_mutex_free(g.lock);
            g.lock = NULL;
        }
    }
    if (rv == CKR_OK) {
        p11_sessions_init();
        g.pid = getpid();
        set_initialized(true);
    }
    pthread_mutex_unlock(&init_lock);
    return rv;
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    return_val_if_fail(pReserved == NULL, CKR_ARGUMENTS_BAD);
    pthread_mutex_lock(&init_lock);
    if (!p11_initialized()) {
        pthread_mutex_unlock(&init_lock);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    p11_sessions_free(false);
    tok_ctx_close(g.tok); /* with the session objects */
    g.tok = NULL;
    set_initialized(false);
    p11_mutex_free(g.lock);
    g.lock = NULL;
    pthread_mutex_unlock(&init_lock);
    return CKR_OK;
}

static void pad(CK_UTF8CHAR *dst, size_t n, const char *src)
{
    size_t l = strlen(src);

    memset(dst, ' ', n);
    memcpy(dst, src, l < n ? l : n);
}

CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(pInfo != NULL, CKR_ARGUMENTS_BAD);
    memset(pInfo, 0, sizeof(*pInfo));
    pInfo->cryptokiVersion.major = 2;
    pInfo->cryptokiVersion.minor = 40;
    pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "p11mk project");
    pad(pInfo->libraryDescription, sizeof(pInfo->libraryDescription), "p11mk master-key sealed token");
    pInfo->libraryVersion.major = 0;
    pInfo->libraryVersion.minor = 1;
    return CKR_OK;
}

CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen)
{
    p11_session *s;
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    rv = p11_session_get(hSession, &s);
    if (rv != CKR_OK)
        return rv;
    if (!pRandomData && ulRandomLen)
        rv = CKR_ARGUMENTS_BAD;
    else if (ulRandomLen)
        rv = tok_random(pRandomData, ulRandomLen);
    p11_session_put(s);
    return rv;
}

CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
    p11_session *s;
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    rv = p11_session_get(hSession, &s);
    if (rv != CKR_OK)
        return rv;
    /* The caller's bytes are mixed in as additional input; the DRBG keeps its
     * own entropy from the operating system. */
    rv = (!pSeed && ulSeedLen) ? CKR_ARGUMENTS_BAD : tok_seed(pSeed, ulSeedLen);
    p11_session_put(s);
    return rv;
}
