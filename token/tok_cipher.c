/* p11mk token layer: the block ciphers and MACs of the mechanisms, fetched
 * from the module's library context once per process (a fetch by name takes
 * a lock and a lookup on every call; the fetched objects live as long as the
 * library context, which is never freed). */
#include "tok_crypto.h"

#include <pthread.h>
#include <string.h>

typedef enum { C_ECB, C_CBC, C_CTR, C_GCM, C_WRAP, C_WRAP_PAD, C_CCM, C_CHACHA_POLY, C_MODES } cmode;

static struct cipher {
    tok_fam fam;
    size_t keylen;
    cmode mode;
    const char *name;
    EVP_CIPHER *c;
} ciphers[] = {
    {TOK_FAM_AES, 16, C_ECB, "AES-128-ECB", NULL},
    {TOK_FAM_AES, 16, C_CBC, "AES-128-CBC", NULL},
    {TOK_FAM_AES, 16, C_CTR, "AES-128-CTR", NULL},
    {TOK_FAM_AES, 16, C_GCM, "AES-128-GCM", NULL},
    {TOK_FAM_AES, 16, C_WRAP, "AES-128-WRAP", NULL},
    {TOK_FAM_AES, 16, C_WRAP_PAD, "AES-128-WRAP-PAD", NULL},
    {TOK_FAM_AES, 16, C_CCM, "AES-128-CCM", NULL},
    {TOK_FAM_AES, 24, C_ECB, "AES-192-ECB", NULL},
    {TOK_FAM_AES, 24, C_CBC, "AES-192-CBC", NULL},
    {TOK_FAM_AES, 24, C_CTR, "AES-192-CTR", NULL},
    {TOK_FAM_AES, 24, C_GCM, "AES-192-GCM", NULL},
    {TOK_FAM_AES, 24, C_WRAP, "AES-192-WRAP", NULL},
    {TOK_FAM_AES, 24, C_WRAP_PAD, "AES-192-WRAP-PAD", NULL},
    {TOK_FAM_AES, 24, C_CCM, "AES-192-CCM", NULL},
    {TOK_FAM_AES, 32, C_ECB, "AES-256-ECB", NULL},
    {TOK_FAM_AES, 32, C_CBC, "AES-256-CBC", NULL},
    {TOK_FAM_AES, 32, C_CTR, "AES-256-CTR", NULL},
    {TOK_FAM_AES, 32, C_GCM, "AES-256-GCM", NULL},
    {TOK_FAM_AES, 32, C_WRAP, "AES-256-WRAP", NULL},
    {TOK_FAM_AES, 32, C_WRAP_PAD, "AES-256-WRAP-PAD", NULL},
    {TOK_FAM_AES, 32, C_CCM, "AES-256-CCM", NULL},
    /* Two-key triple DES is EDE with K1 K2 K1: OpenSSL's DES-EDE takes the 16 bytes. */
    {TOK_FAM_DES3, 16, C_ECB, "DES-EDE-ECB", NULL},
    {TOK_FAM_DES3, 16, C_CBC, "DES-EDE-CBC", NULL},
    {TOK_FAM_DES3, 24, C_ECB, "DES-EDE3-ECB", NULL},
    {TOK_FAM_DES3, 24, C_CBC, "DES-EDE3-CBC", NULL},
    {TOK_FAM_CHACHA20, 32, C_CHACHA_POLY, "ChaCha20-Poly1305", NULL},
    /* OpenSSL's legacy provider: fetched by tok_cipher_fetch_legacy. */
    {TOK_FAM_DES, 8, C_ECB, "DES-ECB", NULL},
    {TOK_FAM_DES, 8, C_CBC, "DES-CBC", NULL},
};
#define N_CIPHERS (sizeof(ciphers) / sizeof(ciphers[0]))

/* The table's entry of each family, mode and key length (in 8-byte units,
 * up to 32 bytes): tok_mech_cipher runs on every cipher init. */
#define KEYLEN_UNITS 5
static struct cipher *by_kind[TOK_FAM_CHACHA20 + 1][C_MODES][KEYLEN_UNITS];

static tok_gcm_fns *gcm_direct[KEYLEN_UNITS]; /* AES-GCM by key length: the provider's functions */
static EVP_MAC *cmac, *hmac;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t legacy_lock = PTHREAD_MUTEX_INITIALIZER;

static void fetch_all(void)
{
    for (size_t i = 0; i < N_CIPHERS; i++) {
        by_kind[ciphers[i].fam][ciphers[i].mode][ciphers[i].keylen / 8] = &ciphers[i];
        if (ciphers[i].fam != TOK_FAM_DES)
            ciphers[i].c = EVP_CIPHER_fetch(ks_libctx(), ciphers[i].name, NULL);
        if (ciphers[i].fam == TOK_FAM_AES && ciphers[i].mode == C_GCM)
            gcm_direct[ciphers[i].keylen / 8] = tok_gcm_resolve(ciphers[i].c);
    }
    cmac = EVP_MAC_fetch(ks_libctx(), "CMAC", NULL);
    hmac = EVP_MAC_fetch(ks_libctx(), "HMAC", NULL);
}

static cmode mode_of(tok_mclass mc)
{
    switch (mc) {
    case M_ECB: return C_ECB;
    case M_AES_CTR: return C_CTR;
    case M_AES_GCM: return C_GCM;
    case M_AES_WRAP: return C_WRAP;
    case M_AES_WRAP_PAD: return C_WRAP_PAD;
    case M_AES_CCM: return C_CCM;
    case M_CHACHA_POLY: return C_CHACHA_POLY;
    default: return C_CBC; /* CBC, CBC_PAD and CMAC */
    }
}

const EVP_CIPHER *tok_mech_cipher(const tok_mech_desc *d, size_t keylen)
{
    struct cipher *e;

    pthread_once(&fetch_once, fetch_all);
    if ((unsigned)d->fam > TOK_FAM_CHACHA20 || keylen % 8 || keylen / 8 >= KEYLEN_UNITS)
        return NULL;
    e = by_kind[d->fam][mode_of(d->mc)][keylen / 8];
    return e ? __atomic_load_n(&e->c, __ATOMIC_ACQUIRE) : NULL;
}

const tok_gcm_fns *tok_mech_gcm(size_t keylen)
{
    pthread_once(&fetch_once, fetch_all);
    return keylen % 8 == 0 && keylen / 8 < KEYLEN_UNITS ? gcm_direct[keylen / 8] : NULL;
}

bool tok_cipher_fetch_legacy(void)
{
    bool all = true;

    pthread_mutex_lock(&legacy_lock);
    for (size_t i = 0; i < N_CIPHERS; i++) {
        if (ciphers[i].fam != TOK_FAM_DES || ciphers[i].c)
            continue;
        EVP_CIPHER *c = EVP_CIPHER_fetch(ks_libctx(), ciphers[i].name, NULL);
        __atomic_store_n(&ciphers[i].c, c, __ATOMIC_RELEASE);
        all &= c != NULL;
    }
    pthread_mutex_unlock(&legacy_lock);
    return all;
}

size_t tok_fam_block(tok_fam fam)
{
    switch (fam) {
    case TOK_FAM_AES: return 16;
    case TOK_FAM_DES3:
    case TOK_FAM_DES: return 8;
    default: return 0;
    }
}

bool tok_fam_key(tok_fam fam, CK_KEY_TYPE kt)
{
    switch (fam) {
    case TOK_FAM_AES: return kt == CKK_AES;
    case TOK_FAM_DES3: return kt == CKK_DES2 || kt == CKK_DES3; /* PKCS#11: the DES3 mechanisms take both */
    case TOK_FAM_DES: return kt == CKK_DES;
    case TOK_FAM_CHACHA20: return kt == CKK_CHACHA20;
    default: return false;
    }
}

/* Digests by the names the mechanism table uses, each fetched on first use
 * and kept for the process (as the library context is). */
static struct {
    const char *name;
    EVP_MD *md;
    tok_dgst_fns *direct; /* the provider's functions, resolved with md; NULL: through EVP */
} digests[] = {{"SHA1", NULL, NULL},     {"SHA224", NULL, NULL},   {"SHA256", NULL, NULL},
               {"SHA384", NULL, NULL},   {"SHA512", NULL, NULL},   {"SHA3-224", NULL, NULL},
               {"SHA3-256", NULL, NULL}, {"SHA3-384", NULL, NULL}, {"SHA3-512", NULL, NULL},
               {"MD5", NULL, NULL}};

#define N_DIGESTS (sizeof(digests) / sizeof(digests[0]))
static pthread_mutex_t digest_lock = PTHREAD_MUTEX_INITIALIZER; /* first uses only */

/* The table's entry of a digest name, N_DIGESTS if none: by address first
 * (the linker merges equal string literals, so the mechanism table's names
 * are mostly these very strings: two digests' names compared per operation
 * were 80 instructions), then by value. */
static size_t digest_index(const char *name)
{
    size_t i;

    for (i = 0; i < N_DIGESTS && digests[i].name != name; i++)
        ;
    for (size_t j = 0; i == N_DIGESTS && j < N_DIGESTS; j++)
        if (strcmp(digests[j].name, name) == 0)
            i = j;
    return i;
}

/* The entry's digest, fetched on first use; its provider's functions are
 * resolved before it is published, so that whoever sees md sees them. */
static const EVP_MD *entry_md(size_t i)
{
    EVP_MD *md, *none = NULL;
    tok_dgst_fns *direct;

    if ((md = __atomic_load_n(&digests[i].md, __ATOMIC_ACQUIRE)) != NULL)
        return md;
    if (!(md = EVP_MD_fetch(ks_libctx(), digests[i].name, NULL)))
        return NULL;
    direct = tok_dgst_resolve(md);
    pthread_mutex_lock(&digest_lock);
    if (!(none = digests[i].md)) {
        digests[i].direct = direct;
        __atomic_store_n(&digests[i].md, md, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&digest_lock);
    if (none) { /* another thread was first */
        EVP_MD_free(md);
        OPENSSL_free(direct);
        md = none;
    }
    return md;
}

const EVP_MD *tok_md(const char *name)
{
    size_t i = name ? digest_index(name) : N_DIGESTS;
    return i < N_DIGESTS ? entry_md(i) : NULL;
}

const tok_dgst_fns *tok_md_direct(const char *name)
{
    size_t i = name ? digest_index(name) : N_DIGESTS;
    return i < N_DIGESTS && entry_md(i) ? digests[i].direct : NULL;
}

size_t tok_md_size(const char *name)
{
    const EVP_MD *md = tok_md(name);
    int n = md ? EVP_MD_get_size(md) : 0;
    return n > 0 ? (size_t)n : 0;
}

EVP_MAC *tok_mac(bool want_cmac)
{
    pthread_once(&fetch_once, fetch_all);
    return want_cmac ? cmac : hmac;
}
