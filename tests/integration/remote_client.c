/* remote_client: a PKCS#11 client for the served token (p11-kit server,
 * p11-kit-client.so, a .module file's "remote:"), usable with any module
 * path: the p11mk module itself, p11-kit-client.so or p11-kit-proxy.so.
 *
 *   remote_client MODULE LABEL PIN keys          the key pairs the other modes use, made on
 *                                                the token when missing: EC P-256 "rc-ec"
 *                                                (CKA_ID ec) and RSA-2048 "rc-rsa" (CKA_ID 5a)
 *   remote_client MODULE LABEL PIN sign STOPFILE sign until STOPFILE exists: ECDSA over a
 *                                                SHA-256 hash computed here (CKM_ECDSA), every
 *                                                tenth round also CKM_SHA256_RSA_PKCS; every
 *                                                signature is verified with OpenSSL against the
 *                                                public key read from the token at start;
 *                                                STOPFILE.started appears after the first round
 *   remote_client MODULE LABEL PIN bench N       N ECDSA signatures as above (C_SignInit +
 *                                                C_Sign timed), the first and last verified
 *   remote_client MODULE LABEL PIN restart DIR   sign once, create DIR/ready, wait for DIR/go,
 *                                                sign with the same session (the server was
 *                                                restarted meanwhile: reports the error), then
 *                                                C_Finalize + C_Initialize + C_Login and sign
 *   remote_client MODULE LABEL PIN probe         one line per mechanism (listed by
 *                                                C_GetMechanismList, and what one operation with
 *                                                it returns) and per function; token keys
 *                                                labeled "probe-*" are made when missing
 *
 * Output: sign: "sign: ops N ecdsa N rsa N failures N seconds S"; bench:
 * "bench: signs N seconds S rate R/s p50_us X p99_us Y init_ms Z"; restart:
 * "restart: before=CKR_OK after=CKR_... reinit=CKR_OK signed_after_reinit=CKR_OK";
 * probe: "mech NAME listed=yes|no CKR_..." and "func NAME CKR_...|absent".
 * SIGPIPE is ignored (as long-running applications do; p11-kit-client.so
 * raises it when it writes to a server that went away), unless
 * REMOTE_CLIENT_SIGPIPE=default.
 * Exit status: 0 when every operation the mode asked for worked (probe: when the
 * calls could be made, whatever they returned; restart: when the error after the
 * restart was an error and signing worked after re-initializing), 1 when one did
 * not, 2 on a setup error. */
#include <dlfcn.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <p11-kit/pkcs11.h>

#include "pkcs11/p11_v3.h" /* CK_INTERFACE, CK_FUNCTION_LIST_3_0 */

/* PKCS#11 3.0 names that p11-kit 0.24's header lacks. */
#ifndef CKM_SHA3_256
#define CKM_SHA3_256 0x2b0UL
#define CKM_SHA3_256_HMAC 0x2b1UL
#endif
#ifndef CKM_EC_MONTGOMERY_KEY_PAIR_GEN
#define CKM_EC_MONTGOMERY_KEY_PAIR_GEN 0x1056UL
#endif
#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x210bUL
#endif

static CK_FUNCTION_LIST *f;
static void *mod_handle;
static const char *mod_path, *tok_label, *user_pin;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *rv_name(CK_RV rv)
{
    static char buf[32];
    switch (rv) {
#define N(x) case x: return #x
    N(CKR_OK); N(CKR_HOST_MEMORY); N(CKR_SLOT_ID_INVALID); N(CKR_GENERAL_ERROR); N(CKR_FUNCTION_FAILED);
    N(CKR_ARGUMENTS_BAD); N(CKR_NO_EVENT); N(CKR_ATTRIBUTE_READ_ONLY); N(CKR_ATTRIBUTE_TYPE_INVALID);
    N(CKR_ATTRIBUTE_VALUE_INVALID); N(CKR_DATA_INVALID); N(CKR_DATA_LEN_RANGE); N(CKR_DEVICE_ERROR);
    N(CKR_DEVICE_MEMORY); N(CKR_DEVICE_REMOVED); N(CKR_ENCRYPTED_DATA_INVALID); N(CKR_FUNCTION_CANCELED);
    N(CKR_FUNCTION_NOT_SUPPORTED); N(CKR_KEY_HANDLE_INVALID); N(CKR_KEY_SIZE_RANGE); N(CKR_KEY_TYPE_INCONSISTENT);
    N(CKR_KEY_FUNCTION_NOT_PERMITTED); N(CKR_KEY_NOT_WRAPPABLE); N(CKR_KEY_UNEXTRACTABLE);
    N(CKR_MECHANISM_INVALID); N(CKR_MECHANISM_PARAM_INVALID); N(CKR_OBJECT_HANDLE_INVALID);
    N(CKR_OPERATION_ACTIVE); N(CKR_OPERATION_NOT_INITIALIZED); N(CKR_PIN_INCORRECT); N(CKR_SESSION_CLOSED);
    N(CKR_SESSION_HANDLE_INVALID); N(CKR_SIGNATURE_INVALID); N(CKR_SIGNATURE_LEN_RANGE);
    N(CKR_TEMPLATE_INCOMPLETE); N(CKR_TEMPLATE_INCONSISTENT); N(CKR_TOKEN_NOT_PRESENT);
    N(CKR_USER_ALREADY_LOGGED_IN); N(CKR_USER_NOT_LOGGED_IN); N(CKR_WRAPPED_KEY_INVALID);
    N(CKR_WRAPPING_KEY_HANDLE_INVALID); N(CKR_BUFFER_TOO_SMALL); N(CKR_STATE_UNSAVEABLE);
    N(CKR_CRYPTOKI_NOT_INITIALIZED); N(CKR_CRYPTOKI_ALREADY_INITIALIZED); N(CKR_RANDOM_SEED_NOT_SUPPORTED);
#undef N
    }
    snprintf(buf, sizeof(buf), "CKR_0x%lx", (unsigned long)rv);
    return buf;
}

/* ---- the token ------------------------------------------------------------ */

static bool find_slot(CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_UTF8CHAR want[32];
    CK_RV rv = f->C_GetSlotList(CK_TRUE, slots, &n);

    if (rv != CKR_OK) {
        fprintf(stderr, "remote_client: C_GetSlotList failed: %s\n", rv_name(rv));
        return false;
    }
    memset(want, ' ', sizeof(want));
    memcpy(want, tok_label, strlen(tok_label) < 32 ? strlen(tok_label) : 32);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0) {
            *out = slots[i];
            return true;
        }
    }
    fprintf(stderr, "remote_client: no token labeled %s among %lu slots\n", tok_label, (unsigned long)n);
    return false;
}

/* C_Initialize, a R/W session on the token and the user's login. */
static CK_RV open_token(CK_SESSION_HANDLE *s)
{
    CK_SLOT_ID slot;
    CK_RV rv;

    if ((rv = f->C_Initialize(NULL)) != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        fprintf(stderr, "remote_client: C_Initialize (%s) failed: %s\n", mod_path, rv_name(rv));
        return rv;
    }
    if (!find_slot(&slot))
        return CKR_TOKEN_NOT_PRESENT;
    if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s)) != CKR_OK) {
        fprintf(stderr, "remote_client: C_OpenSession failed: %s\n", rv_name(rv));
        return rv;
    }
    rv = f->C_Login(*s, CKU_USER, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        fprintf(stderr, "remote_client: C_Login failed: %s\n", rv_name(rv));
        return rv;
    }
    return CKR_OK;
}

/* The one object of this class and label, if there is exactly one. */
static bool find_one(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label, CK_OBJECT_HANDLE *h)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE got[2];
    CK_ULONG n = 0;

    if (f->C_FindObjectsInit(s, t, 2) != CKR_OK)
        return false;
    CK_RV rv = f->C_FindObjects(s, got, 2, &n);
    f->C_FindObjectsFinal(s);
    if (rv != CKR_OK || n != 1)
        return false;
    *h = got[0];
    return true;
}

static const CK_BYTE oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const CK_BYTE oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
static const CK_BYTE oid_x25519[] = {0x06, 0x03, 0x2b, 0x65, 0x6e};

/* A key pair labeled label (PUB and PRIV objects, CKA_ID id), made when missing. */
static CK_RV key_pair(CK_SESSION_HANDLE s, const char *label, CK_BYTE id, CK_MECHANISM_TYPE gen,
                      const CK_BYTE *params, CK_ULONG plen, CK_BBOOL token, CK_OBJECT_HANDLE *pub,
                      CK_OBJECT_HANDLE *priv)
{
    if (token && find_one(s, CKO_PUBLIC_KEY, label, pub) && find_one(s, CKO_PRIVATE_KEY, label, priv))
        return CKR_OK;
    CK_MECHANISM m = {gen, NULL, 0};
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG bits = 2048;
    CK_BYTE e[] = {1, 0, 1};
    CK_ATTRIBUTE pt[8], kt[8];
    CK_ULONG np = 0, nk = 0;
    bool rsa = gen == CKM_RSA_PKCS_KEY_PAIR_GEN, dh = gen == CKM_EC_MONTGOMERY_KEY_PAIR_GEN;

    pt[np++] = (CK_ATTRIBUTE){CKA_TOKEN, &token, 1};
    pt[np++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
    pt[np++] = (CK_ATTRIBUTE){CKA_ID, &id, 1};
    kt[nk++] = (CK_ATTRIBUTE){CKA_TOKEN, &token, 1};
    kt[nk++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
    kt[nk++] = (CK_ATTRIBUTE){CKA_ID, &id, 1};
    if (rsa) {
        pt[np++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
        pt[np++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, e, sizeof(e)};
        pt[np++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &yes, 1};
        pt[np++] = (CK_ATTRIBUTE){CKA_WRAP, &yes, 1};
        kt[nk++] = (CK_ATTRIBUTE){CKA_DECRYPT, &yes, 1};
        kt[nk++] = (CK_ATTRIBUTE){CKA_UNWRAP, &yes, 1};
    } else {
        pt[np++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)params, plen};
    }
    if (dh) {
        kt[nk++] = (CK_ATTRIBUTE){CKA_DERIVE, &yes, 1};
    } else {
        pt[np++] = (CK_ATTRIBUTE){CKA_VERIFY, &yes, 1};
        kt[nk++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, 1};
        if (gen == CKM_EC_KEY_PAIR_GEN)
            kt[nk++] = (CK_ATTRIBUTE){CKA_DERIVE, &yes, 1};
    }
    return f->C_GenerateKeyPair(s, &m, pt, np, kt, nk, pub, priv);
}

/* The raw point of an EC public key (CKA_EC_POINT without its DER OCTET STRING). */
static bool ec_point(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, CK_BYTE *out, CK_ULONG *len)
{
    CK_BYTE der[160];
    CK_ATTRIBUTE a = {CKA_EC_POINT, der, sizeof(der)};
    if (f->C_GetAttributeValue(s, pub, &a, 1) != CKR_OK || a.ulValueLen < 3)
        return false;
    CK_ULONG off = 0;
    if (der[0] == 0x04 && der[1] == a.ulValueLen - 2)
        off = 2;
    else if (der[0] == 0x04 && der[1] == 0x81 && der[2] == a.ulValueLen - 3)
        off = 3;
    *len = a.ulValueLen - off;
    memcpy(out, der + off, *len);
    return true;
}

/* The public key of a token key pair as an OpenSSL key, read through the module. */
static EVP_PKEY *openssl_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, bool ec)
{
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, ec ? "EC" : "RSA", NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    BIGNUM *n = NULL, *e = NULL;
    CK_BYTE point[140], mod[1024], exp[16];
    CK_ULONG plen;

    if (!ctx || !bld)
        goto out;
    if (ec) {
        if (!ec_point(s, pub, point, &plen) ||
            !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) ||
            !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, plen))
            goto out;
    } else {
        CK_ATTRIBUTE a[] = {{CKA_MODULUS, mod, sizeof(mod)}, {CKA_PUBLIC_EXPONENT, exp, sizeof(exp)}};
        if (f->C_GetAttributeValue(s, pub, a, 2) != CKR_OK ||
            !(n = BN_bin2bn(mod, (int)a[0].ulValueLen, NULL)) || !(e = BN_bin2bn(exp, (int)a[1].ulValueLen, NULL)) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
            goto out;
    }
    if (!(params = OSSL_PARAM_BLD_to_param(bld)) || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pk = NULL;
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    BN_free(n);
    BN_free(e);
    if (!pk)
        fprintf(stderr, "remote_client: cannot read the %s public key into OpenSSL\n", ec ? "EC" : "RSA");
    return pk;
}

/* OpenSSL's verdict on a PKCS#11 ECDSA signature (r || s) over a SHA-256 hash. */
static bool ecdsa_ok(EVP_PKEY *pk, const CK_BYTE hash[32], const CK_BYTE *sig, CK_ULONG len)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)len / 2, NULL), *sv = BN_bin2bn(sig + len / 2, (int)len / 2, NULL);
    unsigned char *der = NULL;
    int dlen = -1;
    bool ok = false;

    if (es && r && sv && ECDSA_SIG_set0(es, r, sv) == 1) {
        r = sv = NULL;
        dlen = i2d_ECDSA_SIG(es, &der);
    }
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pk, NULL);
    if (dlen > 0 && ctx && EVP_PKEY_verify_init(ctx) == 1 && EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1)
        ok = EVP_PKEY_verify(ctx, der, (size_t)dlen, hash, 32) == 1;
    EVP_PKEY_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    BN_free(r);
    BN_free(sv);
    return ok;
}

/* OpenSSL's verdict on an RSA PKCS#1 v1.5 signature with SHA-256 over msg. */
static bool rsa_ok(EVP_PKEY *pk, const CK_BYTE *msg, size_t mlen, const CK_BYTE *sig, CK_ULONG len)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) == 1 &&
              EVP_DigestVerify(md, sig, len, msg, mlen) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

struct signer {
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE ec_priv, rsa_priv;
    EVP_PKEY *ec_pub, *rsa_pub;
};

static bool signer_setup(struct signer *g, CK_SESSION_HANDLE s)
{
    CK_OBJECT_HANDLE ec_pub, rsa_pub;

    g->s = s;
    if (!find_one(s, CKO_PRIVATE_KEY, "rc-ec", &g->ec_priv) || !find_one(s, CKO_PUBLIC_KEY, "rc-ec", &ec_pub) ||
        !find_one(s, CKO_PRIVATE_KEY, "rc-rsa", &g->rsa_priv) || !find_one(s, CKO_PUBLIC_KEY, "rc-rsa", &rsa_pub)) {
        fprintf(stderr, "remote_client: the keys rc-ec and rc-rsa are missing (run the 'keys' mode first)\n");
        return false;
    }
    return (g->ec_pub = openssl_key(s, ec_pub, true)) != NULL && (g->rsa_pub = openssl_key(s, rsa_pub, false)) != NULL;
}

/* One ECDSA signature over SHA-256(msg), hashed here, verified by OpenSSL.
 * Returns the call's CK_RV, or CKR_SIGNATURE_INVALID when OpenSSL refuses it. */
static CK_RV sign_ecdsa(struct signer *g, const CK_BYTE *msg, size_t mlen, double *lat)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE hash[32], sig[72];
    CK_ULONG len = sizeof(sig);
    CK_RV rv;

    EVP_Digest(msg, mlen, hash, NULL, EVP_sha256(), NULL);
    double a = now();
    if ((rv = f->C_SignInit(g->s, &m, g->ec_priv)) == CKR_OK)
        rv = f->C_Sign(g->s, hash, sizeof(hash), sig, &len);
    if (lat)
        *lat = now() - a;
    if (rv == CKR_OK && (len != 64 || !ecdsa_ok(g->ec_pub, hash, sig, len)))
        rv = CKR_SIGNATURE_INVALID;
    return rv;
}

static CK_RV sign_rsa(struct signer *g, const CK_BYTE *msg, size_t mlen)
{
    CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_BYTE sig[512];
    CK_ULONG len = sizeof(sig);
    CK_RV rv;

    if ((rv = f->C_SignInit(g->s, &m, g->rsa_priv)) == CKR_OK)
        rv = f->C_Sign(g->s, (CK_BYTE_PTR)msg, mlen, sig, &len);
    if (rv == CKR_OK && !rsa_ok(g->rsa_pub, msg, mlen, sig, len))
        rv = CKR_SIGNATURE_INVALID;
    return rv;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- modes ---------------------------------------------------------------- */

static int mode_keys(CK_SESSION_HANDLE s)
{
    CK_OBJECT_HANDLE pub, priv;
    CK_RV rv;

    if ((rv = key_pair(s, "rc-ec", 0xec, CKM_EC_KEY_PAIR_GEN, oid_p256, sizeof(oid_p256), CK_TRUE, &pub, &priv)) != CKR_OK ||
        (rv = key_pair(s, "rc-rsa", 0x5a, CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0, CK_TRUE, &pub, &priv)) != CKR_OK) {
        fprintf(stderr, "remote_client: C_GenerateKeyPair failed: %s\n", rv_name(rv));
        return 1;
    }
    printf("keys: rc-ec and rc-rsa present\n");
    return 0;
}

static int mode_sign(CK_SESSION_HANDLE s, const char *stopfile)
{
    struct signer g;
    unsigned long ops = 0, ecdsa = 0, rsa = 0, fails = 0;
    CK_BYTE msg[64];
    double t0 = now();

    if (!signer_setup(&g, s))
        return 2;
    while (access(stopfile, F_OK) != 0) {
        snprintf((char *)msg, sizeof(msg), "remote_client %ld op %lu", (long)getpid(), ops);
        CK_RV rv = sign_ecdsa(&g, msg, sizeof(msg), NULL);
        if (rv != CKR_OK) {
            fails++;
            fprintf(stderr, "remote_client: ECDSA signature %lu: %s\n", ops, rv_name(rv));
        } else {
            ecdsa++;
        }
        if (ops % 10 == 0) {
            if ((rv = sign_rsa(&g, msg, sizeof(msg))) != CKR_OK) {
                fails++;
                fprintf(stderr, "remote_client: RSA signature %lu: %s\n", ops, rv_name(rv));
            } else {
                rsa++;
            }
        }
        if (ops++ == 0) {
            char started[4096];
            snprintf(started, sizeof(started), "%s.started", stopfile);
            FILE *sf = fopen(started, "w");
            if (sf)
                fclose(sf);
        }
    }
    printf("sign: ops %lu ecdsa %lu rsa %lu failures %lu seconds %.2f\n", ops, ecdsa, rsa, fails, now() - t0);
    return fails ? 1 : 0;
}

static int mode_bench(CK_SESSION_HANDLE s, unsigned long n, double init_s)
{
    struct signer g;
    double *lat = calloc(n, sizeof(*lat)), total = 0;
    CK_BYTE msg[64];
    unsigned long fails = 0;

    if (!lat || !signer_setup(&g, s))
        return 2;
    for (unsigned long i = 0; i < n; i++) {
        snprintf((char *)msg, sizeof(msg), "bench %lu", i);
        /* Every signature is made the same way; only the first and the last
         * are checked by OpenSSL, so that the figure is the token's. */
        CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
        CK_BYTE hash[32], sig[72];
        CK_ULONG len = sizeof(sig);
        CK_RV rv;
        if (i == 0 || i == n - 1) {
            rv = sign_ecdsa(&g, msg, sizeof(msg), &lat[i]);
        } else {
            EVP_Digest(msg, sizeof(msg), hash, NULL, EVP_sha256(), NULL);
            double a = now();
            if ((rv = f->C_SignInit(g.s, &m, g.ec_priv)) == CKR_OK)
                rv = f->C_Sign(g.s, hash, sizeof(hash), sig, &len);
            lat[i] = now() - a;
        }
        if (rv != CKR_OK) {
            fails++;
            fprintf(stderr, "remote_client: bench signature %lu: %s\n", i, rv_name(rv));
        }
        total += lat[i];
    }
    qsort(lat, n, sizeof(*lat), cmp_double);
    printf("bench: signs %lu seconds %.3f rate %.0f/s p50_us %.1f p99_us %.1f init_ms %.2f failures %lu\n", n, total,
           (double)n / total, lat[n / 2] * 1e6, lat[(size_t)((double)n * 0.99)] * 1e6, init_s * 1e3, fails);
    free(lat);
    return fails ? 1 : 0;
}

static bool wait_file(const char *path, int seconds)
{
    for (int i = 0; i < seconds * 100; i++) {
        if (access(path, F_OK) == 0)
            return true;
        usleep(10000);
    }
    return false;
}

static int mode_restart(CK_SESSION_HANDLE s, const char *dir)
{
    struct signer g;
    char ready[4096], go[4096];
    CK_BYTE msg[] = "signed across a server restart";

    if (!signer_setup(&g, s))
        return 2;
    CK_RV before = sign_ecdsa(&g, msg, sizeof(msg), NULL);
    snprintf(ready, sizeof(ready), "%s/ready", dir);
    snprintf(go, sizeof(go), "%s/go", dir);
    FILE *rf = fopen(ready, "w");
    if (rf)
        fclose(rf);
    if (!wait_file(go, 120)) {
        fprintf(stderr, "remote_client: %s did not appear\n", go);
        return 2;
    }
    /* The same session, after the server went away: a clean error, not a hang
     * (the alarm set in main ends a hang with exit 3). */
    CK_RV after = sign_ecdsa(&g, msg, sizeof(msg), NULL);
    CK_RV again = after == CKR_OK ? CKR_OK : sign_ecdsa(&g, msg, sizeof(msg), NULL);
    /* What an application does: finalize, initialize, log in again. */
    CK_RV fin = f->C_Finalize(NULL);
    CK_SESSION_HANDLE s2;
    CK_RV reinit = open_token(&s2), signed_after = CKR_GENERAL_ERROR;
    if (reinit == CKR_OK) {
        EVP_PKEY_free(g.ec_pub);
        EVP_PKEY_free(g.rsa_pub);
        if (signer_setup(&g, s2))
            signed_after = sign_ecdsa(&g, msg, sizeof(msg), NULL);
    }
    printf("restart: before=%s after=%s", rv_name(before), rv_name(after));
    printf(" after_again=%s", rv_name(again));
    printf(" finalize=%s", rv_name(fin));
    printf(" reinit=%s", rv_name(reinit));
    printf(" signed_after_reinit=%s\n", rv_name(signed_after));
    return before == CKR_OK && after != CKR_OK && reinit == CKR_OK && signed_after == CKR_OK ? 0 : 1;
}

/* ---- probe ---------------------------------------------------------------- */

static CK_MECHANISM_TYPE listed[512];
static CK_ULONG n_listed;

static const char *is_listed(CK_MECHANISM_TYPE m)
{
    for (CK_ULONG i = 0; i < n_listed; i++)
        if (listed[i] == m)
            return "yes";
    return "no";
}

enum kind { DIGEST, SIGN, CRYPT, KEYGEN, KEYPAIR, WRAP, DERIVE };
enum key { NONE, EC, RSA, ED, AES, HMAC, DES3, N_KEYS };

struct probe_keys {
    CK_OBJECT_HANDLE pub[N_KEYS], priv[N_KEYS]; /* indexed by enum key; secret keys in priv */
    bool have[N_KEYS];
};

/* A secret key labeled label, made when missing (token object): AES-256, a
 * 32-byte generic secret, or triple DES (whose length is its type's). */
static bool secret_key(CK_SESSION_HANDLE s, const char *label, CK_KEY_TYPE type, CK_OBJECT_HANDLE *h)
{
    if (find_one(s, CKO_SECRET_KEY, label, h))
        return true;
    CK_MECHANISM m = {type == CKK_AES    ? CKM_AES_KEY_GEN
                      : type == CKK_DES3 ? CKM_DES3_KEY_GEN
                                         : CKM_GENERIC_SECRET_KEY_GEN,
                      NULL, 0};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = 32, n = 0;
    CK_ATTRIBUTE t[11];
    t[n++] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, 1};
    t[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
    if (type != CKK_DES3)
        t[n++] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &len, sizeof(len)};
    if (type == CKK_GENERIC_SECRET) {
        t[n++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, 1};
        t[n++] = (CK_ATTRIBUTE){CKA_VERIFY, &yes, 1};
    } else {
        t[n++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &yes, 1};
        t[n++] = (CK_ATTRIBUTE){CKA_DECRYPT, &yes, 1};
    }
    if (type == CKK_AES) {
        t[n++] = (CK_ATTRIBUTE){CKA_SIGN, &yes, 1};
        t[n++] = (CK_ATTRIBUTE){CKA_VERIFY, &yes, 1};
        t[n++] = (CK_ATTRIBUTE){CKA_WRAP, &yes, 1};
        t[n++] = (CK_ATTRIBUTE){CKA_UNWRAP, &yes, 1};
        t[n++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &yes, 1};
        t[n++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &no, 1};
    }
    return f->C_GenerateKey(s, &m, t, n, h) == CKR_OK;
}

static void probe_setup(CK_SESSION_HANDLE s, struct probe_keys *k)
{
    memset(k, 0, sizeof(*k));
    k->have[EC] = key_pair(s, "probe-ec", 0x01, CKM_EC_KEY_PAIR_GEN, oid_p256, sizeof(oid_p256), CK_TRUE, &k->pub[EC],
                           &k->priv[EC]) == CKR_OK;
    k->have[RSA] = key_pair(s, "probe-rsa", 0x02, CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0, CK_TRUE, &k->pub[RSA],
                            &k->priv[RSA]) == CKR_OK;
    k->have[ED] = key_pair(s, "probe-ed", 0x03, CKM_EC_EDWARDS_KEY_PAIR_GEN, oid_ed25519, sizeof(oid_ed25519), CK_TRUE,
                           &k->pub[ED], &k->priv[ED]) == CKR_OK;
    k->have[AES] = secret_key(s, "probe-aes", CKK_AES, &k->priv[AES]);
    k->have[HMAC] = secret_key(s, "probe-hmac", CKK_GENERIC_SECRET, &k->priv[HMAC]);
    k->have[DES3] = secret_key(s, "probe-des3", CKK_DES3, &k->priv[DES3]);
}

struct row {
    const char *name;
    CK_MECHANISM_TYPE mech;
    enum kind kind;
    enum key key;
    CK_ULONG data_len; /* what is signed or encrypted */
};

static CK_RV probe_sign(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE sk, CK_OBJECT_HANDLE vk,
                        CK_ULONG dlen)
{
    CK_BYTE data[256], sig[512];
    CK_ULONG len = sizeof(sig);
    CK_RV rv;

    memset(data, 0x5a, sizeof(data));
    data[0] = 0; /* below the modulus, for RSA_X_509 */
    if ((rv = f->C_SignInit(s, m, sk)) != CKR_OK || (rv = f->C_Sign(s, data, dlen, sig, &len)) != CKR_OK)
        return rv;
    if ((rv = f->C_VerifyInit(s, m, vk)) != CKR_OK)
        return rv;
    return f->C_Verify(s, data, dlen, sig, len);
}

static CK_RV probe_crypt(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE ek, CK_OBJECT_HANDLE dk,
                         CK_ULONG dlen)
{
    CK_BYTE data[64], ct[512], pt[512];
    CK_ULONG clen = sizeof(ct), plen = sizeof(pt);
    CK_RV rv;

    memset(data, 0x33, sizeof(data));
    if ((rv = f->C_EncryptInit(s, m, ek)) != CKR_OK || (rv = f->C_Encrypt(s, data, dlen, ct, &clen)) != CKR_OK)
        return rv;
    if ((rv = f->C_DecryptInit(s, m, dk)) != CKR_OK || (rv = f->C_Decrypt(s, ct, clen, pt, &plen)) != CKR_OK)
        return rv;
    return plen == dlen && memcmp(pt, data, dlen) == 0 ? CKR_OK : CKR_DATA_INVALID;
}

static CK_RV probe_wrap(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE uk)
{
    CK_OBJECT_HANDLE target, back;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = 32;
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_EXTRACTABLE, &yes, 1},
                        {CKA_ENCRYPT, &yes, 1}};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1},
                         {CKA_ENCRYPT, &yes, 1}};
    CK_BYTE blob[512];
    CK_ULONG blen = sizeof(blob);
    CK_RV rv;

    if ((rv = f->C_GenerateKey(s, &gen, t, 4, &target)) != CKR_OK)
        return rv;
    if ((rv = f->C_WrapKey(s, m, wk, target, blob, &blen)) != CKR_OK)
        return rv;
    return f->C_UnwrapKey(s, m, uk, blob, blen, ut, 4, &back);
}

static CK_RV probe_row(CK_SESSION_HANDLE s, const struct row *r, struct probe_keys *k)
{
    CK_BYTE iv[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    CK_GCM_PARAMS gcm = {iv, 12, 96, (CK_BYTE_PTR) "aad", 3, 128};
    CK_AES_CTR_PARAMS ctr = {64, {0}};
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_ULONG mac_len = 16;
    CK_BYTE point[140];
    CK_ULONG plen = 0;
    CK_ECDH1_DERIVE_PARAMS ecdh = {CKD_NULL, 0, NULL, 0, point};
    CK_MECHANISM m = {r->mech, NULL, 0};

    switch (r->mech) {
    case CKM_AES_CBC: case CKM_AES_CBC_PAD: m.pParameter = iv; m.ulParameterLen = 16; break;
    case CKM_DES3_CBC: m.pParameter = iv; m.ulParameterLen = 8; break;
    case CKM_AES_GCM: m.pParameter = &gcm; m.ulParameterLen = sizeof(gcm); break;
    case CKM_AES_CTR: m.pParameter = &ctr; m.ulParameterLen = sizeof(ctr); break;
    case CKM_RSA_PKCS_PSS: case CKM_SHA256_RSA_PKCS_PSS: m.pParameter = &pss; m.ulParameterLen = sizeof(pss); break;
    case CKM_RSA_PKCS_OAEP: m.pParameter = &oaep; m.ulParameterLen = sizeof(oaep); break;
    case CKM_SHA256_HMAC_GENERAL: case CKM_AES_CMAC_GENERAL: m.pParameter = &mac_len; m.ulParameterLen = sizeof(mac_len); break;
    case CKM_ECDH1_DERIVE:
        if (!k->have[EC] || !ec_point(s, k->pub[EC], point, &plen))
            return CKR_KEY_HANDLE_INVALID;
        ecdh.ulPublicDataLen = plen;
        m.pParameter = &ecdh;
        m.ulParameterLen = sizeof(ecdh);
        break;
    default: break;
    }
    if (r->key != NONE && !k->have[r->key])
        return CKR_KEY_HANDLE_INVALID; /* its key could not be made through this module */
    switch (r->kind) {
    case DIGEST: {
        CK_BYTE d[64], out[64];
        CK_ULONG len = sizeof(out);
        CK_RV rv;
        memset(d, 7, sizeof(d));
        if ((rv = f->C_DigestInit(s, &m)) != CKR_OK)
            return rv;
        return f->C_Digest(s, d, sizeof(d), out, &len);
    }
    case SIGN:
        return probe_sign(s, &m, k->priv[r->key], r->key == EC || r->key == RSA || r->key == ED ? k->pub[r->key]
                                                                                                 : k->priv[r->key],
                          r->data_len);
    case CRYPT:
        return probe_crypt(s, &m, r->key == RSA ? k->pub[RSA] : k->priv[r->key], k->priv[r->key], r->data_len);
    case WRAP:
        return probe_wrap(s, &m, r->key == RSA ? k->pub[RSA] : k->priv[r->key], k->priv[r->key]);
    case KEYGEN: {
        CK_BBOOL no = CK_FALSE;
        CK_ULONG len = 32;
        CK_ATTRIBUTE t[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}};
        CK_OBJECT_HANDLE h;
        return f->C_GenerateKey(s, &m, t, r->mech == CKM_DES3_KEY_GEN ? 1 : 2, &h); /* DES3: a fixed length */
    }
    case KEYPAIR: {
        CK_OBJECT_HANDLE pub, priv;
        if (r->mech == CKM_RSA_PKCS_KEY_PAIR_GEN)
            return key_pair(s, "kp-rsa", 0x11, r->mech, NULL, 0, CK_FALSE, &pub, &priv);
        if (r->mech == CKM_EC_EDWARDS_KEY_PAIR_GEN)
            return key_pair(s, "kp-ed", 0x12, r->mech, oid_ed25519, sizeof(oid_ed25519), CK_FALSE, &pub, &priv);
        if (r->mech == CKM_EC_MONTGOMERY_KEY_PAIR_GEN)
            return key_pair(s, "kp-x", 0x13, r->mech, oid_x25519, sizeof(oid_x25519), CK_FALSE, &pub, &priv);
        return key_pair(s, "kp-ec", 0x14, r->mech, oid_p256, sizeof(oid_p256), CK_FALSE, &pub, &priv);
    }
    case DERIVE: {
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
        CK_BBOOL no = CK_FALSE;
        CK_ULONG len = 32;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                            {CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}};
        CK_OBJECT_HANDLE h;
        return f->C_DeriveKey(s, &m, k->priv[EC], t, 4, &h);
    }
    }
    return CKR_GENERAL_ERROR;
}

static const struct row rows[] = {
    {"SHA-1", CKM_SHA_1, DIGEST, NONE, 0},
    {"SHA224", CKM_SHA224, DIGEST, NONE, 0},
    {"SHA256", CKM_SHA256, DIGEST, NONE, 0},
    {"SHA384", CKM_SHA384, DIGEST, NONE, 0},
    {"SHA512", CKM_SHA512, DIGEST, NONE, 0},
    {"SHA3-256", CKM_SHA3_256, DIGEST, NONE, 0},
    {"EC-KEY-PAIR-GEN", CKM_EC_KEY_PAIR_GEN, KEYPAIR, NONE, 0},
    {"ECDSA", CKM_ECDSA, SIGN, EC, 32},
    {"ECDSA-SHA1", CKM_ECDSA_SHA1, SIGN, EC, 64},
    {"ECDSA-SHA256", CKM_ECDSA_SHA256, SIGN, EC, 64},
    {"ECDSA-SHA384", CKM_ECDSA_SHA384, SIGN, EC, 64},
    {"ECDH1-DERIVE", CKM_ECDH1_DERIVE, DERIVE, EC, 0},
    {"EC-EDWARDS-KEY-PAIR-GEN", CKM_EC_EDWARDS_KEY_PAIR_GEN, KEYPAIR, NONE, 0},
    {"EDDSA", CKM_EDDSA, SIGN, ED, 64},
    {"EC-MONTGOMERY-KEY-PAIR-GEN", CKM_EC_MONTGOMERY_KEY_PAIR_GEN, KEYPAIR, NONE, 0},
    {"RSA-PKCS-KEY-PAIR-GEN", CKM_RSA_PKCS_KEY_PAIR_GEN, KEYPAIR, NONE, 0},
    {"RSA-PKCS (sign)", CKM_RSA_PKCS, SIGN, RSA, 51},
    {"RSA-PKCS (encrypt)", CKM_RSA_PKCS, CRYPT, RSA, 32},
    {"RSA-X-509", CKM_RSA_X_509, SIGN, RSA, 256},
    {"SHA256-RSA-PKCS", CKM_SHA256_RSA_PKCS, SIGN, RSA, 64},
    {"SHA384-RSA-PKCS", CKM_SHA384_RSA_PKCS, SIGN, RSA, 64},
    {"SHA224-RSA-PKCS", CKM_SHA224_RSA_PKCS, SIGN, RSA, 64},
    {"RSA-PKCS-PSS", CKM_RSA_PKCS_PSS, SIGN, RSA, 32},
    {"SHA256-RSA-PKCS-PSS", CKM_SHA256_RSA_PKCS_PSS, SIGN, RSA, 64},
    {"RSA-PKCS-OAEP", CKM_RSA_PKCS_OAEP, CRYPT, RSA, 32},
    {"RSA-PKCS-OAEP (wrap)", CKM_RSA_PKCS_OAEP, WRAP, RSA, 0},
    {"GENERIC-SECRET-KEY-GEN", CKM_GENERIC_SECRET_KEY_GEN, KEYGEN, NONE, 0},
    {"SHA256-HMAC", CKM_SHA256_HMAC, SIGN, HMAC, 64},
    {"SHA224-HMAC", CKM_SHA224_HMAC, SIGN, HMAC, 64},
    {"SHA256-HMAC-GENERAL", CKM_SHA256_HMAC_GENERAL, SIGN, HMAC, 64},
    {"SHA3-256-HMAC", CKM_SHA3_256_HMAC, SIGN, HMAC, 64},
    {"AES-KEY-GEN", CKM_AES_KEY_GEN, KEYGEN, NONE, 0},
    {"AES-ECB", CKM_AES_ECB, CRYPT, AES, 32},
    {"AES-CBC", CKM_AES_CBC, CRYPT, AES, 32},
    {"AES-CBC-PAD", CKM_AES_CBC_PAD, CRYPT, AES, 30},
    {"AES-CTR", CKM_AES_CTR, CRYPT, AES, 30},
    {"AES-GCM", CKM_AES_GCM, CRYPT, AES, 30},
    {"AES-CMAC", CKM_AES_CMAC, SIGN, AES, 64},
    {"AES-CMAC-GENERAL", CKM_AES_CMAC_GENERAL, SIGN, AES, 64},
    {"AES-KEY-WRAP", CKM_AES_KEY_WRAP, WRAP, AES, 0},
    {"AES-KEY-WRAP-KWP", CKM_AES_KEY_WRAP_KWP, WRAP, AES, 0},
    {"DES3-KEY-GEN", CKM_DES3_KEY_GEN, KEYGEN, NONE, 0},
    {"DES3-ECB", CKM_DES3_ECB, CRYPT, DES3, 32},
    {"DES3-CBC", CKM_DES3_CBC, CRYPT, DES3, 32},
};

typedef CK_RV (*get_iface_fn)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);

static void probe_functions(CK_SESSION_HANDLE s, struct probe_keys *k)
{
    CK_BYTE buf[64];
    CK_RV rv;

    printf("func C_GenerateRandom %s\n", rv_name(f->C_GenerateRandom(s, buf, sizeof(buf))));
    printf("func C_SeedRandom %s\n", rv_name(f->C_SeedRandom(s, buf, sizeof(buf))));
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_ULONG len = sizeof(buf);
    if ((rv = f->C_DigestInit(s, &sha)) == CKR_OK && (rv = f->C_DigestKey(s, k->priv[AES])) == CKR_OK)
        rv = f->C_DigestFinal(s, buf, &len);
    else
        f->C_DigestFinal(s, buf, &len);
    printf("func C_DigestKey %s\n", rv_name(rv));
    /* A session data object: copied, relabeled, read back, destroyed. */
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE dt[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, 1}, {CKA_LABEL, "probe-data", 10},
                         {CKA_VALUE, "value", 5}};
    CK_OBJECT_HANDLE d, c;
    rv = f->C_CreateObject(s, dt, 4, &d);
    printf("func C_CreateObject %s\n", rv_name(rv));
    CK_ATTRIBUTE lab = {CKA_LABEL, "probe-copy", 10};
    printf("func C_CopyObject %s\n", rv_name(rv == CKR_OK ? f->C_CopyObject(s, d, &lab, 1, &c) : rv));
    printf("func C_SetAttributeValue %s\n", rv_name(rv == CKR_OK ? f->C_SetAttributeValue(s, d, &lab, 1) : rv));
    CK_ULONG size;
    printf("func C_GetObjectSize %s\n", rv_name(rv == CKR_OK ? f->C_GetObjectSize(s, d, &size) : rv));
    printf("func C_DestroyObject %s\n", rv_name(rv == CKR_OK ? f->C_DestroyObject(s, d) : rv));
    len = sizeof(buf);
    printf("func C_GetOperationState %s\n", rv_name(f->C_GetOperationState(s, buf, &len)));
    CK_SLOT_ID ev;
    printf("func C_WaitForSlotEvent(CKF_DONT_BLOCK) %s\n", rv_name(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL)));
    CK_SESSION_INFO si;
    printf("func C_GetSessionInfo %s\n", rv_name(f->C_GetSessionInfo(s, &si)));
    printf("func C_SetPIN %s\n", rv_name(f->C_SetPIN(s, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin),
                                                     (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin))));
    /* PKCS#11 3.0: through C_GetInterface, when the module exports it. */
    get_iface_fn gi = (get_iface_fn)dlsym(mod_handle, "C_GetInterface");
    CK_INTERFACE *iface = NULL;
    CK_VERSION v3 = {3, 0};
    if (!gi || gi((CK_UTF8CHAR_PTR) "PKCS 11", &v3, &iface, 0) != CKR_OK || !iface) {
        printf("func C_GetInterface absent\n");
        printf("func C_SessionCancel absent\n");
        return;
    }
    printf("func C_GetInterface CKR_OK\n");
    CK_FUNCTION_LIST_3_0 *f3 = iface->pFunctionList;
    printf("func C_SessionCancel %s\n", rv_name(f3->C_SessionCancel(s, CKF_SIGN)));
}

static int mode_probe(CK_SESSION_HANDLE s)
{
    struct probe_keys k;
    CK_SESSION_INFO si;
    CK_SLOT_ID slot;
    CK_RV rv;

    if ((rv = f->C_GetSessionInfo(s, &si)) != CKR_OK)
        return 2;
    slot = si.slotID;
    n_listed = sizeof(listed) / sizeof(listed[0]);
    if ((rv = f->C_GetMechanismList(slot, listed, &n_listed)) != CKR_OK) {
        fprintf(stderr, "remote_client: C_GetMechanismList failed: %s\n", rv_name(rv));
        return 2;
    }
    printf("listed %lu\n", (unsigned long)n_listed);
    probe_setup(s, &k);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        printf("mech %s listed=%s %s\n", rows[i].name, is_listed(rows[i].mech), rv_name(probe_row(s, &rows[i], &k)));
    probe_functions(s, &k);
    return 0;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "remote_client: no answer within the time limit (a hang)\n";
    if (write(2, msg, sizeof(msg) - 1) < 0) {
    }
    _exit(3);
}

int main(int argc, char **argv)
{
    CK_RV (*get)(CK_FUNCTION_LIST **);
    CK_SESSION_HANDLE s;

    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: remote_client MODULE LABEL PIN keys | sign STOPFILE | bench N | restart DIR | probe\n");
        return 2;
    }
    mod_path = argv[1];
    tok_label = argv[2];
    user_pin = argv[3];
    const char *mode = argv[4], *arg = argc > 5 ? argv[5] : NULL;
    signal(SIGALRM, on_alarm);
    /* A write to a server that went away raises SIGPIPE in p11-kit-client.so;
     * long-running applications ignore it, and so does this client unless
     * REMOTE_CLIENT_SIGPIPE=default asks to see what the others get. */
    const char *sp = getenv("REMOTE_CLIENT_SIGPIPE");
    if (!sp || strcmp(sp, "default") != 0)
        signal(SIGPIPE, SIG_IGN);
    alarm(600);
    if (!(mod_handle = dlopen(mod_path, RTLD_NOW)) ||
        !(get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod_handle, "C_GetFunctionList")) || get(&f) != CKR_OK) {
        fprintf(stderr, "remote_client: cannot load %s: %s\n", mod_path, dlerror());
        return 2;
    }
    double t0 = now();
    if (open_token(&s) != CKR_OK)
        return 2;
    double init_s = now() - t0;
    int rc;
    if (strcmp(mode, "keys") == 0)
        rc = mode_keys(s);
    else if (strcmp(mode, "sign") == 0 && arg)
        rc = mode_sign(s, arg);
    else if (strcmp(mode, "bench") == 0 && arg && strtoul(arg, NULL, 10) > 0)
        rc = mode_bench(s, strtoul(arg, NULL, 10), init_s);
    else if (strcmp(mode, "restart") == 0 && arg) {
        alarm(180);
        rc = mode_restart(s, arg);
    } else if (strcmp(mode, "probe") == 0)
        rc = mode_probe(s);
    else {
        fprintf(stderr, "remote_client: unknown mode or missing argument: %s\n", mode);
        return 2;
    }
    f->C_Finalize(NULL);
    return rc;
}
