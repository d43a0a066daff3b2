/* A session's spare operation (token/tok_op.c) keeps its key and reuses it
 * without the key cache while nothing was committed. Attacked from other
 * threads: two workers, each with a session per key (so that every spare
 * keeps its key), keep encrypting with three keys (one public, one private,
 * one destroyed and made again each round)
 * while the main thread changes them; after each change returns, the
 * workers' next init must see it:
 *   1. CKA_ENCRYPT set to false: CKR_KEY_FUNCTION_NOT_PERMITTED; true again: OK;
 *   2. C_Logout: the private key refused; C_Login: it serves again;
 *   3. C_DestroyObject: CKR_KEY_HANDLE_INVALID for the old handle.
 * Every encryption that succeeds must give the key's right answer.
 * Exits 1 on a violation. */
#include "common.h"

#include <pthread.h>

#include <openssl/evp.h>

enum { WORKERS = 2 };
static _Atomic int phase, stop, bad;
static _Atomic int done[WORKERS];
static CK_OBJECT_HANDLE k_pub, k_priv;
static _Atomic CK_OBJECT_HANDLE k_temp;
static const uint8_t v_pub[16] = "public key  val", v_priv[16] = "private key val", v_temp[16] = "temporary key v";
static const CK_BYTE block[16] = "one block input";

static CK_OBJECT_HANDLE make_key(const uint8_t v[16], bool priv)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_OBJECT_HANDLE o;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE, (void *)v, 16},
                        {CKA_TOKEN, &yes, 1},         {CKA_PRIVATE, priv ? &yes : &no, 1},   {CKA_ENCRYPT, &yes, 1}};
    CHECK(f->C_CreateObject(h, a, 6, &o));
    return o;
}

static void expect_block(const uint8_t key[16], uint8_t out[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0;
    if (!c || !EVP_EncryptInit_ex2(c, EVP_aes_128_ecb(), key, NULL, NULL) || !EVP_CIPHER_CTX_set_padding(c, 0) ||
        !EVP_EncryptUpdate(c, out, &n, block, 16) || n != 16) {
        fprintf(stderr, "OpenSSL failed\n");
        exit(2);
    }
    EVP_CIPHER_CTX_free(c);
}

static uint8_t want_pub[16], want_priv[16], want_temp[16];

/* ECB of one block: the init's or the call's code; a success must match. */
static CK_RV ecb(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, const uint8_t want[16], const char *who)
{
    CK_MECHANISM m = {CKM_AES_ECB, NULL, 0};
    CK_BYTE out[16];
    CK_ULONG n = 16;
    CK_RV rv = f->C_EncryptInit(s, &m, k);
    if (rv == CKR_OK && (rv = f->C_Encrypt(s, (CK_BYTE_PTR)block, 16, out, &n)) == CKR_OK &&
        (n != 16 || memcmp(out, want, 16) != 0)) {
        fprintf(stderr, "%s: a wrong ciphertext\n", who);
        bad = 1;
    }
    return rv;
}

/* What each phase (phase % 6) lets the workers see of each key. */
static void check(int p, const CK_SESSION_HANDLE s[3], CK_OBJECT_HANDLE temp)
{
    int q = p % 6;
    CK_RV a = ecb(s[0], k_pub, want_pub, "public key"), b = ecb(s[1], k_priv, want_priv, "private key"),
          c = ecb(s[2], temp, want_temp, "temporary key");
    CK_RV want_a = q == 1 ? CKR_KEY_FUNCTION_NOT_PERMITTED : CKR_OK;
    bool priv_ok = q != 3;
    CK_RV want_c = q == 5 ? CKR_KEY_HANDLE_INVALID : CKR_OK;
    if (a != want_a) {
        fprintf(stderr, "phase %d: the public key gave 0x%lx, want 0x%lx\n", p, a, want_a);
        bad = 1;
    }
    if ((b == CKR_OK) != priv_ok) {
        fprintf(stderr, "phase %d: the private key gave 0x%lx while %s\n", p, b, priv_ok ? "logged in" : "logged out");
        bad = 1;
    }
    if (c != want_c) {
        fprintf(stderr, "phase %d: the temporary key gave 0x%lx, want 0x%lx\n", p, c, want_c);
        bad = 1;
    }
}

static void *worker(void *arg)
{
    int me = (int)(intptr_t)arg, seen = -1;
    CK_SESSION_HANDLE s[3]; /* one per key: each session's spare keeps its key */
    for (int i = 0; i < 3; i++)
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s[i]));
    while (!stop) {
        int p = phase;
        CK_OBJECT_HANDLE temp = k_temp;
        if (p == seen) { /* keep the spares in use while the main thread works */
            (void)ecb(s[0], k_pub, want_pub, "public key");
            (void)ecb(s[1], k_priv, want_priv, "private key");
            (void)ecb(s[2], temp, want_temp, "temporary key");
            continue;
        }
        seen = p;
        check(p, s, temp);
        done[me] = p;
    }
    for (int i = 0; i < 3; i++)
        f->C_CloseSession(s[i]);
    return NULL;
}

static void step(int p)
{
    phase = p;
    for (int i = 0; i < WORKERS; i++)
        while (done[i] != p && !bad)
            sched_yield();
}

int main(void)
{
    pthread_t th[WORKERS];
    int rounds = getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 15;
    CK_ATTRIBUTE off = {CKA_ENCRYPT, &no, 1}, on = {CKA_ENCRYPT, &yes, 1};
    int p = 0;

    setup(); /* user logged in on `slot` through h */
    expect_block(v_pub, want_pub);
    expect_block(v_priv, want_priv);
    expect_block(v_temp, want_temp);
    k_pub = make_key(v_pub, false);
    k_priv = make_key(v_priv, true);
    k_temp = make_key(v_temp, false);
    for (int i = 0; i < WORKERS; i++)
        done[i] = -1;
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
    step(p = 0);
    for (int r = 0; r < rounds && !bad; r++) {
        CHECK(f->C_SetAttributeValue(h, k_pub, &off, 1));
        step(++p); /* 1 */
        CHECK(f->C_SetAttributeValue(h, k_pub, &on, 1));
        step(++p); /* 2 */
        CHECK(f->C_Logout(h));
        step(++p); /* 3 */
        CHECK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
        step(++p); /* 4 */
        CK_OBJECT_HANDLE old = k_temp;
        CHECK(f->C_DestroyObject(h, old));
        step(++p); /* 5: the workers still ask for the old handle */
        k_temp = make_key(v_temp, false);
        step(++p); /* 0 */
    }
    stop = 1;
    for (int i = 0; i < WORKERS; i++)
        pthread_join(th[i], NULL);
    printf("spare keys: %d phases, %s\n", p, bad ? "VIOLATION" : "all held");
    teardown();
    return bad ? 1 : 0;
}
