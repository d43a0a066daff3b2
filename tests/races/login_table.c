/* The lock-free login table (p11_login_state's fast path), attacked from a
 * second thread:
 *  1. after C_Logout returns in one thread, C_SignInit with a private key in
 *     another must fail (CKR_USER_NOT_LOGGED_IN / CKR_KEY_HANDLE_INVALID) and
 *     C_GetSessionInfo must show a public session;
 *  2. after C_Login returns, C_GetSessionInfo in another thread (which kept
 *     reading NOBODY until then, so that it is cached) must show the user;
 *  3. SO then user on one slot, seen from the other thread;
 *  4. 18 tokens: slot % 16 collisions; a login on one slot must never show
 *     on another, while a reader thread hammers all slots.
 * Exits 1 on a violation. */
#include "common.h"

#include <pthread.h>

static _Atomic int phase, done_phase, stop, bad;
static CK_SESSION_HANDLE rs; /* the reader's session on `slot` */
static CK_OBJECT_HANDLE priv;
static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

static CK_STATE state_of(CK_SESSION_HANDLE s)
{
    CK_SESSION_INFO si;
    CK_RV rv = f->C_GetSessionInfo(s, &si);
    if (rv != CKR_OK) { fprintf(stderr, "GetSessionInfo 0x%lx\n", rv); exit(2); }
    return si.state;
}

/* The reader: keeps reading (to fill the table) and, at each phase the main
 * thread publishes after its call returned, checks what it must see. */
static void *reader(void *arg)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    int seen = 0;
    (void)arg;
    while (!stop) {
        int p = phase;
        if (p == seen) { /* keep the fast path warm */
            (void)state_of(rs);
            continue;
        }
        seen = p;
        CK_STATE st = state_of(rs);
        int want_user = p % 4 == 1, want_so = p % 4 == 3;
        CK_STATE want = want_user ? CKS_RW_USER_FUNCTIONS : want_so ? CKS_RW_SO_FUNCTIONS : CKS_RW_PUBLIC_SESSION;
        if (st != want) {
            fprintf(stderr, "phase %d: state %lu, want %lu\n", p, st, want);
            bad = 1;
        }
        CK_RV rv = f->C_SignInit(rs, &m, priv);
        if (want_user && rv != CKR_OK) {
            fprintf(stderr, "phase %d: SignInit while logged in 0x%lx\n", p, rv);
            bad = 1;
        }
        if (!want_user && rv == CKR_OK) {
            fprintf(stderr, "phase %d: SignInit with the private key after C_Logout returned\n", p);
            bad = 1;
        }
        if (rv == CKR_OK) {
            CK_BYTE d[32] = {1}, sig[80];
            CK_ULONG l = sizeof(sig);
            if (f->C_Sign(rs, d, 32, sig, &l) != CKR_OK) { fprintf(stderr, "phase %d: Sign failed\n", p); bad = 1; }
        }
        done_phase = p;
    }
    return NULL;
}

static void step(int p)
{
    phase = p;
    while (done_phase != p && !bad)
        sched_yield();
}

int main(void)
{
    CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub;
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1}};
    pthread_t th;
    int rounds = getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 12;
    int p = 0;

    setup(); /* user logged in on `slot` through h */
    CHECK(f->C_GenerateKeyPair(h, &gen, pt, 2, kt, 4, &pub, &priv));
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rs));
    CHECK(f->C_Logout(h));
    pthread_create(&th, NULL, reader, NULL);
    step(p = 4); /* nobody */
    for (int r = 0; r < rounds && !bad; r++) {
        CHECK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
        step(++p); /* 1: user */
        CHECK(f->C_Logout(h));
        step(++p); /* 2: nobody */
        CHECK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
        step(++p); /* 3: SO */
        CHECK(f->C_Logout(h));
        step(++p); /* 0: nobody */
    }
    stop = 1;
    pthread_join(th, NULL);
    printf("login/logout visibility: %d phases, %s\n", p, bad ? "VIOLATION" : "ok");

    /* Collisions: 18 tokens (slots s and s+16 share an entry); log in on one
     * at a time, a reader thread checks every other shows public. */
    {
        enum { N = 18 };
        CK_SLOT_ID sl[N];
        CK_SESSION_HANDLE ss[N];
        int nt = 0;
        sl[nt] = slot;
        CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &ss[nt]));
        nt++;
        while (nt < N) {
            CK_SLOT_ID all[64];
            CK_ULONG n = 64;
            CK_UTF8CHAR label[32];
            CHECK(f->C_GetSlotList(CK_FALSE, all, &n));
            CK_SLOT_ID ns = all[n - 1];
            CK_SESSION_HANDLE so;
            memset(label, ' ', 32);
            memcpy(label, "coll", 4);
            CHECK(f->C_InitToken(ns, (CK_UTF8CHAR_PTR)SO, strlen(SO), label));
            CHECK(f->C_OpenSession(ns, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &so));
            CHECK(f->C_Login(so, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
            CHECK(f->C_InitPIN(so, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
            CHECK(f->C_Logout(so));
            sl[nt] = ns;
            ss[nt++] = so;
        }
        int coll = 0;
        for (int i = 0; i < N; i++)
            for (int j = i + 1; j < N; j++)
                if (sl[i] % 16 == sl[j] % 16)
                    coll++;
        printf("%d tokens, slots %lu..%lu, %d colliding pairs\n", N, sl[0], sl[N - 1], coll);
        if (!coll) { fprintf(stderr, "no slot %% 16 collision: the test proves nothing\n"); return 2; }
        for (int i = 0; i < N && !bad; i++) {
            /* warm every slot's entry as nobody, in an order that makes
             * colliding slots overwrite each other */
            for (int k = 0; k < 3; k++)
                for (int j = 0; j < N; j++)
                    (void)state_of(ss[j]);
            CHECK(f->C_Login(ss[i], CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
            for (int k = 0; k < 3; k++)
                for (int j = 0; j < N; j++) {
                    CK_STATE st = state_of(ss[j]);
                    CK_STATE want = j == i ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION;
                    if (st != want) {
                        fprintf(stderr, "login on slot %lu: slot %lu shows state %lu\n", sl[i], sl[j], st);
                        bad = 1;
                    }
                }
            CHECK(f->C_Logout(ss[i]));
            for (int j = 0; j < N; j++)
                if (state_of(ss[j]) != CKS_RW_PUBLIC_SESSION) {
                    fprintf(stderr, "after logout on slot %lu: slot %lu not public\n", sl[i], sl[j]);
                    bad = 1;
                }
        }
        /* two colliding slots logged in at once: SO on one, user on other */
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                if (i != j && sl[i] % 16 == sl[j] % 16 && !bad) {
                    CHECK(f->C_Login(ss[i], CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
                    CHECK(f->C_Login(ss[j], CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
                    for (int k = 0; k < 4; k++) {
                        if (state_of(ss[i]) != CKS_RW_SO_FUNCTIONS || state_of(ss[j]) != CKS_RW_USER_FUNCTIONS) {
                            fprintf(stderr, "colliding slots %lu (SO) and %lu (user) mixed up\n", sl[i], sl[j]);
                            bad = 1;
                        }
                    }
                    CHECK(f->C_Logout(ss[i]));
                    if (state_of(ss[i]) != CKS_RW_PUBLIC_SESSION || state_of(ss[j]) != CKS_RW_USER_FUNCTIONS) {
                        fprintf(stderr, "colliding slots %lu/%lu after SO logout wrong\n", sl[i], sl[j]);
                        bad = 1;
                    }
                    CHECK(f->C_Logout(ss[j]));
                    i = j = N; /* one pair is enough: logins cost a KDF each */
                }
    }
    printf("%s\n", bad ? "VIOLATION" : "all held");
    teardown();
    return bad ? 1 : 0;
}
