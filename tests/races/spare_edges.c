/* Hostile checks of the session's spare operation (token/tok_op.c): state
 * of an operation that ended badly must not reach the next one, and checks
 * made at every init must still be made when the spare's key is reused.
 *  1. AES-GCM decryption of a damaged ciphertext, then of a good one
 *     (and a size query + abandoned update in between): right plaintext;
 *  2. CBC-PAD encryption abandoned after CKR_BUFFER_TOO_SMALL on an update
 *     holding a partial block, then ECB and CBC encryptions: OpenSSL's answers;
 *  3. HMAC: C_GetOperationState/C_SetOperationState, then a new signature
 *     on the same session: OpenSSL's answer;
 *  4. a CKA_ALWAYS_AUTHENTICATE EC key: the second signature on the session
 *     (spare reused) still wants C_Login(CKU_CONTEXT_SPECIFIC);
 *  5. a private key used, C_Logout, C_Login as SO: refused.
 * Exits 1 on a violation. */
#include "common.h"

#include <openssl/evp.h>
#include <openssl/core_names.h>

static int bad;
#define EXPECT(cond, ...) do { if (!(cond)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); bad = 1; } } while (0)

static const uint8_t kv[16] = "sixteen byte key";
static const uint8_t hv[32] = "an hmac key of thirty-two bytes";

static CK_OBJECT_HANDLE secret(CK_KEY_TYPE kt, const uint8_t *v, CK_ULONG len, bool priv, bool always)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, (void *)v, len},
                        {CKA_TOKEN, &yes, 1},         {CKA_PRIVATE, priv ? &yes : &no, 1},   {CKA_ENCRYPT, &yes, 1},
                        {CKA_DECRYPT, &yes, 1},       {CKA_SIGN, &yes, 1},                   {CKA_VERIFY, &yes, 1}};
    (void)always;
    CHECK(f->C_CreateObject(h, a, 9, &o));
    return o;
}

static size_t ossl_enc(const char *name, const uint8_t *iv, bool pad, const uint8_t *in, size_t inlen, uint8_t *out)
{
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, name, NULL);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    if (!c || !x || !EVP_EncryptInit_ex2(x, c, kv, iv, NULL) || !EVP_CIPHER_CTX_set_padding(x, pad) ||
        !EVP_EncryptUpdate(x, out, &n, in, (int)inlen) || !EVP_EncryptFinal_ex(x, out + n, &m))
        exit(2);
    EVP_CIPHER_CTX_free(x);
    EVP_CIPHER_free(c);
    return (size_t)(n + m);
}

static size_t ossl_hmac(const uint8_t *in, size_t inlen, uint8_t *out)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *x = EVP_MAC_CTX_new(mac);
    OSSL_PARAM p[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0), OSSL_PARAM_construct_end()};
    size_t n = 0;
    if (!x || !EVP_MAC_init(x, hv, sizeof(hv), p) || !EVP_MAC_update(x, in, inlen) || !EVP_MAC_final(x, out, &n, 64))
        exit(2);
    EVP_MAC_CTX_free(x);
    EVP_MAC_free(mac);
    return n;
}

static void gcm_case(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k)
{
    CK_BYTE iv[12] = "gcm iv bytes", aad[5] = "aad!!", pt[40] = "the plaintext of the gcm check, 40 bytes";
    CK_GCM_PARAMS g = {iv, 12, 96, aad, 5, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &g, sizeof(g)};
    CK_BYTE ct[64], bad_ct[64], out[64];
    CK_ULONG cl = sizeof(ct), ol;
    CHECK(f->C_EncryptInit(s, &m, k));
    CHECK(f->C_Encrypt(s, pt, sizeof(pt), ct, &cl));
    memcpy(bad_ct, ct, cl);
    bad_ct[3] ^= 1;
    for (int round = 0; round < 3; round++) {
        CHECK(f->C_DecryptInit(s, &m, k));
        ol = sizeof(out);
        CK_RV rv = f->C_Decrypt(s, bad_ct, cl, out, &ol);
        EXPECT(rv == CKR_ENCRYPTED_DATA_INVALID, "gcm: a damaged ciphertext gave 0x%lx", rv);
        /* abandoned half way */
        CHECK(f->C_DecryptInit(s, &m, k));
        ol = sizeof(out);
        CHECK(f->C_DecryptUpdate(s, ct, 17, out, &ol));
        CHECK(f->C_DecryptInit(s, NULL, k));
        CHECK(f->C_DecryptInit(s, &m, k));
        ol = 0;
        rv = f->C_Decrypt(s, ct, cl, NULL, &ol);
        EXPECT(rv == CKR_OK, "gcm: size query 0x%lx", rv);
        ol = sizeof(out);
        rv = f->C_Decrypt(s, ct, cl, out, &ol);
        EXPECT(rv == CKR_OK && ol == sizeof(pt) && memcmp(out, pt, ol) == 0, "gcm: good ciphertext gave 0x%lx", rv);
    }
}

static void cbc_case(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k)
{
    CK_BYTE iv[16] = "cbc iv, 16 bytes", in[37] = "thirty-seven bytes of input for cbc!", out[64], want[64];
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, 16}, ecb = {CKM_AES_ECB, NULL, 0};
    CK_ULONG ol;
    for (int round = 0; round < 3; round++) {
        CHECK(f->C_EncryptInit(s, &cbc, k));
        ol = 1;
        CK_RV rv = f->C_EncryptUpdate(s, in, 21, out, &ol);
        EXPECT(rv == CKR_BUFFER_TOO_SMALL, "cbc: update into 1 byte gave 0x%lx", rv);
        ol = sizeof(out);
        CHECK(f->C_EncryptUpdate(s, in, 21, out, &ol)); /* 5 bytes held in the context */
        CHECK(f->C_EncryptInit(s, NULL, k));
        /* the same mechanism and key: the context is reused */
        CHECK(f->C_EncryptInit(s, &cbc, k));
        ol = sizeof(out);
        CHECK(f->C_Encrypt(s, in, sizeof(in), out, &ol));
        size_t wl = ossl_enc("AES-128-CBC", iv, true, in, sizeof(in), want);
        EXPECT(ol == wl && memcmp(out, want, wl) == 0, "cbc-pad after an abandoned operation: a wrong ciphertext");
        /* update that errs half way: then ecb */
        CHECK(f->C_EncryptInit(s, &cbc, k));
        ol = sizeof(out);
        CHECK(f->C_EncryptUpdate(s, in, 7, out, &ol));
        CHECK(f->C_EncryptInit(s, NULL, k));
        CHECK(f->C_EncryptInit(s, &ecb, k));
        ol = sizeof(out);
        CHECK(f->C_Encrypt(s, in, 32, out, &ol));
        wl = ossl_enc("AES-128-ECB", NULL, false, in, 32, want);
        EXPECT(ol == wl && memcmp(out, want, wl) == 0, "ecb after cbc: a wrong ciphertext");
        CHECK(f->C_EncryptInit(s, &ecb, k));
        ol = sizeof(out);
        CHECK(f->C_EncryptUpdate(s, in, 5, out, &ol));
        CHECK(f->C_EncryptInit(s, NULL, k));
        CHECK(f->C_EncryptInit(s, &ecb, k));
        ol = sizeof(out);
        CHECK(f->C_Encrypt(s, in + 5, 32, out, &ol));
        wl = ossl_enc("AES-128-ECB", NULL, false, in + 5, 32, want);
        EXPECT(ol == wl && memcmp(out, want, wl) == 0, "ecb after an abandoned ecb: a wrong ciphertext");
    }
}

static void hmac_state_case(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k)
{
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE st[4096], mac[64], want[64];
    CK_ULONG sl = sizeof(st), ml;
    size_t wl;
    for (int round = 0; round < 3; round++) {
        CHECK(f->C_SignInit(s, &m, k));
        CHECK(f->C_SignUpdate(s, (CK_BYTE_PTR) "first ", 6));
        sl = sizeof(st);
        CHECK(f->C_GetOperationState(s, st, &sl));
        CHECK(f->C_SignUpdate(s, (CK_BYTE_PTR) "junk", 4));
        CHECK(f->C_SetOperationState(s, st, sl, 0, k));
        CHECK(f->C_SignUpdate(s, (CK_BYTE_PTR) "second", 6));
        ml = sizeof(mac);
        CHECK(f->C_SignFinal(s, mac, &ml));
        wl = ossl_hmac((const uint8_t *)"first second", 12, want);
        EXPECT(ml == wl && memcmp(mac, want, wl) == 0, "hmac after C_SetOperationState: a wrong MAC");
        CHECK(f->C_SignInit(s, &m, k));
        ml = sizeof(mac);
        CHECK(f->C_Sign(s, (CK_BYTE_PTR) "third", 5, mac, &ml));
        wl = ossl_hmac((const uint8_t *)"third", 5, want);
        EXPECT(ml == wl && memcmp(mac, want, wl) == 0, "hmac after a restored operation: a wrong MAC");
        /* the restored operation abandoned: the next one fresh */
        CHECK(f->C_SignInit(s, &m, k));
        CHECK(f->C_SignUpdate(s, (CK_BYTE_PTR) "zzz", 3));
        sl = sizeof(st);
        CHECK(f->C_GetOperationState(s, st, &sl));
        CHECK(f->C_SetOperationState(s, st, sl, 0, k));
        CHECK(f->C_SignInit(s, NULL, k));
        CHECK(f->C_SignInit(s, &m, k));
        ml = sizeof(mac);
        CHECK(f->C_Sign(s, (CK_BYTE_PTR) "fourth", 6, mac, &ml));
        wl = ossl_hmac((const uint8_t *)"fourth", 6, want);
        EXPECT(ml == wl && memcmp(mac, want, wl) == 0, "hmac after an abandoned restored operation: a wrong MAC");
    }
}

static CK_OBJECT_HANDLE ec_always(void)
{
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub, priv;
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1},
                         {CKA_ALWAYS_AUTHENTICATE, &yes, 1}};
    CHECK(f->C_GenerateKeyPair(h, &m, pt, 3, kt, 4, &pub, &priv));
    return priv;
}

static void always_auth_case(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k)
{
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    CK_BYTE mac[64];
    CK_ULONG ml;
    for (int round = 0; round < 3; round++) {
        CHECK(f->C_SignInit(s, &m, k));
        ml = sizeof(mac);
        CK_RV rv = f->C_Sign(s, (CK_BYTE_PTR) "x", 1, mac, &ml);
        EXPECT(rv == CKR_USER_NOT_LOGGED_IN, "always-authenticate round %d: no context login gave 0x%lx", round, rv);
        CHECK(f->C_SignInit(s, &m, k));
        CHECK(f->C_Login(s, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
        ml = sizeof(mac);
        CHECK(f->C_Sign(s, (CK_BYTE_PTR) "x", 1, mac, &ml));
    }
}

static void so_case(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE kpriv)
{
    CK_MECHANISM m = {CKM_AES_ECB, NULL, 0};
    CK_BYTE out[16];
    CK_ULONG ol = 16;
    CHECK(f->C_EncryptInit(s, &m, kpriv));
    CHECK(f->C_Encrypt(s, (CK_BYTE_PTR) "0123456789abcdef", 16, out, &ol));
    CHECK(f->C_Logout(h));
    CHECK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
    CK_RV rv = f->C_EncryptInit(s, &m, kpriv);
    EXPECT(rv == CKR_KEY_HANDLE_INVALID, "a private key under an SO login: 0x%lx", rv);
    if (rv == CKR_OK)
        f->C_EncryptInit(s, NULL, 0);
    CHECK(f->C_Logout(h));
    CHECK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
}

int main(void)
{
    setup();
    CK_SESSION_HANDLE s;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    CK_OBJECT_HANDLE k = secret(CKK_AES, kv, 16, false, false), kp = secret(CKK_AES, kv, 16, true, false),
                     hk = secret(CKK_GENERIC_SECRET, hv, 32, false, false),
                     ha = ec_always();
    gcm_case(s, k);
    cbc_case(s, k);
    hmac_state_case(s, hk);
    always_auth_case(s, ha);
    so_case(s, kp);
    printf("spare edges: %s\n", bad ? "VIOLATION" : "all held");
    teardown();
    return bad ? 1 : 0;
}
