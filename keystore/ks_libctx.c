/* p11mk keystore: the OpenSSL library context every layer of the module
 * uses (a shared service, not part of record sealing). The module's own
 * context keeps the application's OpenSSL configuration and providers out
 * of the keystore's cryptography, and ours out of the application's: the
 * default provider always, the legacy one only when the configuration asks
 * (legacy_mechanisms = yes). Created once per process, never freed (OpenSSL
 * objects fetched from it live as long as the process). */
#include "ks_internal.h"

#include <pthread.h>
#include <stdbool.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/provider.h>

static OSSL_LIB_CTX *libctx;
static pthread_once_t libctx_once = PTHREAD_ONCE_INIT;

static void libctx_init(void)
{
    libctx = OSSL_LIB_CTX_new();
    if (libctx && !OSSL_PROVIDER_load(libctx, "default")) {
        OSSL_LIB_CTX_free(libctx);
        libctx = NULL;
    }
}

OSSL_LIB_CTX *ks_libctx(void)
{
    pthread_once(&libctx_once, libctx_init);
    return libctx;
}

static OSSL_PROVIDER *legacy;
static pthread_mutex_t legacy_lock = PTHREAD_MUTEX_INITIALIZER;

bool ks_libctx_load_legacy(void)
{
    bool ok;

    if (!ks_libctx())
        return false;
    pthread_mutex_lock(&legacy_lock);
    if (!legacy) {
        /* A failure leaves nothing in the application's OpenSSL error queue. */
        ERR_set_mark();
        legacy = OSSL_PROVIDER_load(libctx, "legacy");
        ERR_pop_to_mark();
    }
    ok = legacy != NULL;
    pthread_mutex_unlock(&legacy_lock);
    return ok;
}
