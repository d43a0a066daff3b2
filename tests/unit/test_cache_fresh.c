/* Hostile tests of the hot path without a read transaction (ks_commit_seq):
 * a cached key and a login's token incarnation are trusted without a read
 * while nothing committed to the keystore. Every commit by any process (an
 * attribute change, a destroy, a token re-initialized, a record edited on
 * disk, a master-key rotation step, a map grown by another process) must
 * send the next use through the full check, so that no stale key, no key
 * after destroy and no login after a re-initialization is ever used, in
 * this process or in another one.
 *
 * The cross-process cases hammer the key in this process while a forked
 * child (its own C_Initialize) commits, and check the first use after the
 * child's commit returned: a hit that recorded a commit reading newer than
 * the snapshot it checked would be trusted forever after. Synchronization
 * is by pipes only. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "keystore/ks_tamper.h"
#include "tests/unit/test_p11.h"

static const CK_MECHANISM hmac = {CKM_SHA256_HMAC, NULL, 0};

/* A token HMAC key (CKA_SIGN true, modifiable, private). */
static CK_OBJECT_HANDLE make_hmac(CK_SESSION_HANDLE h, const char *label)
{
    CK_MECHANISM m = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_OBJECT_HANDLE k;
    CK_ATTRIBUTE t[] = {
        {CKA_VALUE_LEN, &len, sizeof(len)},
        {CKA_TOKEN, &yes, 1},
        {CKA_PRIVATE, &yes, 1},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_SIGN, &yes, 1},
        {CKA_VERIFY, &yes, 1},
        {CKA_MODIFIABLE, &yes, 1},
    };
    CK(f->C_GenerateKey(h, &m, t, 7, &k));
    return k;
}

/* C_SignInit with the key, and when it starts, the C_Sign that ends it:
 * C_SignInit's return value. */
static CK_RV use_hmac(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k)
{
    CK_BYTE mac[32];
    CK_ULONG n = sizeof(mac);
    CK_RV rv = f->C_SignInit(h, (CK_MECHANISM_PTR)&hmac, k);
    if (rv == CKR_OK)
        CK(f->C_Sign(h, (CK_BYTE_PTR) "data", 4, mac, &n));
    return rv;
}

/* The MAC of "data" under the key, or the C_SignInit failure. */
static CK_RV mac_of(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k, CK_BYTE mac[32])
{
    CK_ULONG n = 32;
    CK_RV rv = f->C_SignInit(h, (CK_MECHANISM_PTR)&hmac, k);
    if (rv == CKR_OK) {
        CK(f->C_Sign(h, (CK_BYTE_PTR) "data", 4, mac, &n));
        assert_int_equal(n, 32);
    }
    return rv;
}

static void put_byte(int fd, char c)
{
    while (write(fd, &c, 1) != 1)
        assert_int_equal(errno, EINTR);
}

static char get_byte(int fd)
{
    char c;
    ssize_t r;
    while ((r = read(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    assert_int_equal(r, 1);
    return c;
}

static bool byte_ready(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

/* The child's side of a pipe pair: C_Initialize, a logged-in user session. */
typedef struct {
    int in, out; /* child reads in, writes out */
    pid_t pid;
} peer;

static void peer_start(peer *p)
{
    int p2c[2], c2p[2];
    assert_int_equal(pipe(p2c), 0);
    assert_int_equal(pipe(c2p), 0);
    p->pid = fork();
    assert_true(p->pid >= 0);
    if (p->pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        p->in = p2c[0];
        p->out = c2p[1];
        return;
    }
    close(p2c[0]);
    close(c2p[1]);
    p->in = c2p[0];  /* the parent reads what the child writes */
    p->out = p2c[1]; /* and writes what it reads */
}

static void peer_wait(peer *p)
{
    int status;
    close(p->in);
    close(p->out);
    assert_int_equal(waitpid(p->pid, &status, 0), p->pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* In the child: the module anew (a fork child must C_Initialize). */
static CK_SESSION_HANDLE child_session(CK_SLOT_ID s, bool login)
{
    CK_SESSION_HANDLE ch;
    if (f->C_Initialize(NULL) != CKR_OK ||
        f->C_OpenSession(s, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &ch) != CKR_OK)
        _exit(10);
    if (login && f->C_Login(ch, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) != CKR_OK)
        _exit(11);
    return ch;
}

/* Use the key (in this process) until the peer says its commit returned:
 * the uses that overlap the commit are the ones that may cache a reading
 * taken during it. The byte the peer sent. */
static char hammer_until_done(peer *p, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k, unsigned long *uses)
{
    while (!byte_ready(p->in)) {
        (void)use_hmac(h, k);
        (*uses)++;
    }
    return get_byte(p->in);
}

/* A keystore of its own for this test (tmp/NAME): the module finalized,
 * the group's configuration pointed at it, and initialized again. The
 * teardown (teardown_own) goes back to the group's keystore. */
static void own_keystore(const char *name)
{
    CK(f->C_Finalize(NULL));
    snprintf(keystore, sizeof(keystore), "%s/%s", tmp, name);
    write_conf(conf, NULL);
    CK(f->C_Initialize(NULL));
}

static int teardown_own(void **state)
{
    (void)state;
    f->C_Finalize(NULL);
    unsetenv("P11MK_MAPSIZE_INIT");
    snprintf(keystore, sizeof(keystore), "%s/ks", tmp);
    write_conf(conf, NULL);
    return 0;
}

/* ---- another process changes the key while this one uses it ----------- */

enum { ROUNDS = 60 };

/* Another process turns CKA_SIGN off and on again, ROUNDS times; this
 * process signs all along. After each of its commits, the first C_SignInit
 * here must see the new value. */
static void test_other_process_sets_sign(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("setattr");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_hmac(h, "toggled");
    peer p;
    peer_start(&p);
    if (p.pid == 0) {
        CK_SESSION_HANDLE ch = child_session(s, true);
        for (int i = 0; i < 2 * ROUNDS; i++) {
            CK_BBOOL v = (i & 1) ? CK_TRUE : CK_FALSE;
            CK_ATTRIBUTE t[] = {{CKA_SIGN, &v, 1}};
            if (get_byte(p.in) != 'g')
                _exit(12);
            if (f->C_SetAttributeValue(ch, k, t, 1) != CKR_OK)
                _exit(13);
            put_byte(p.out, 'd');
        }
        _exit(f->C_Finalize(NULL) == CKR_OK ? 0 : 14);
    }
    unsigned long uses = 0, stale = 0;
    for (int i = 0; i < 2 * ROUNDS; i++) {
        CK_RV want = (i & 1) ? CKR_OK : CKR_KEY_FUNCTION_NOT_PERMITTED;
        put_byte(p.out, 'g');
        assert_int_equal(hammer_until_done(&p, h, k, &uses), 'd');
        CK_RV rv = use_hmac(h, k);
        if (rv != want) {
            stale++;
            /* Still wrong without any commit in between: it is cached. */
            RV(rv, use_hmac(h, k));
        }
    }
    peer_wait(&p);
    if (stale)
        fail_msg("%lu of %d commits by another process were not seen by the next C_SignInit (%lu uses)", stale,
                 2 * ROUNDS, uses);
    CK(f->C_CloseAllSessions(s));
}

/* Another process destroys keys this one is using: after each destroy
 * returned, the key is gone here too. */
static void test_other_process_destroys(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("destroy");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        char label[16];
        snprintf(label, sizeof(label), "doomed-%d", i);
        k[i] = make_hmac(h, label);
    }
    peer p;
    peer_start(&p);
    if (p.pid == 0) {
        CK_SESSION_HANDLE ch = child_session(s, true);
        for (int i = 0; i < ROUNDS; i++) {
            if (get_byte(p.in) != 'g')
                _exit(12);
            if (f->C_DestroyObject(ch, k[i]) != CKR_OK)
                _exit(13);
            put_byte(p.out, 'd');
        }
        _exit(f->C_Finalize(NULL) == CKR_OK ? 0 : 14);
    }
    unsigned long uses = 0, alive = 0;
    for (int i = 0; i < ROUNDS; i++) {
        CK(use_hmac(h, k[i])); /* cached */
        put_byte(p.out, 'g');
        assert_int_equal(hammer_until_done(&p, h, k[i], &uses), 'd');
        CK_RV rv = use_hmac(h, k[i]);
        if (rv == CKR_OK)
            alive++;
        else
            RV(CKR_KEY_HANDLE_INVALID, rv);
    }
    peer_wait(&p);
    if (alive)
        fail_msg("%lu of %d keys destroyed by another process still signed here (%lu uses)", alive, ROUNDS, uses);
    CK(f->C_CloseAllSessions(s));
}

/* Another process re-initializes the token (C_InitToken) while this one,
 * logged in, signs with a private token key: after the call returned, the
 * login here is over and the key is gone. */
static void test_other_process_reinits(void **state)
{
    (void)state;
    enum { REINITS = 8 };
    CK_SLOT_ID s = make_token("reinit");
    CK_SESSION_HANDLE h = user_session(s, true);
    peer p;
    peer_start(&p);
    if (p.pid == 0) {
        CK_UTF8CHAR l[32];
        pad32(l, "reinit");
        if (f->C_Initialize(NULL) != CKR_OK)
            _exit(10);
        for (int i = 0; i < REINITS; i++) {
            if (get_byte(p.in) != 'g')
                _exit(12);
            if (f->C_InitToken(s, (CK_UTF8CHAR_PTR)SO, strlen(SO), l) != CKR_OK)
                _exit(13);
            put_byte(p.out, 'd');
        }
        _exit(f->C_Finalize(NULL) == CKR_OK ? 0 : 14);
    }
    unsigned long uses = 0, logged_in = 0, alive = 0;
    for (int i = 0; i < REINITS; i++) {
        CK_OBJECT_HANDLE k = make_hmac(h, "before-reinit");
        CK_SESSION_INFO si;
        CK(use_hmac(h, k));
        put_byte(p.out, 'g');
        while (!byte_ready(p.in)) {
            (void)f->C_GetSessionInfo(h, &si);
            (void)use_hmac(h, k);
            uses++;
        }
        assert_int_equal(get_byte(p.in), 'd');
        CK(f->C_GetSessionInfo(h, &si));
        if (si.state != CKS_RW_PUBLIC_SESSION)
            logged_in++;
        CK_RV rv = use_hmac(h, k);
        if (rv == CKR_OK)
            alive++;
        else
            assert_true(rv == CKR_KEY_HANDLE_INVALID || rv == CKR_USER_NOT_LOGGED_IN);
        /* The new token: its user PIN, and the login back. */
        CK_RV lo = f->C_Logout(h);
        assert_true(lo == CKR_OK || lo == CKR_USER_NOT_LOGGED_IN);
        CK(f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)));
        CK(f->C_InitPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
        CK(f->C_Logout(h));
        CK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    }
    peer_wait(&p);
    if (logged_in || alive)
        fail_msg("after %d re-initializations by another process: the login here survived %lu, the old token's "
                 "key still signed %lu (%lu uses)", REINITS, logged_in, alive, uses);
    CK(f->C_CloseAllSessions(s));
}

/* Another process changes the user PIN and re-initializes nothing: the
 * login here stands (a PIN change ends no login), and the key keeps working. */
static void test_other_process_changes_pin(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("pin");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_hmac(h, "pin-key");
    CK_BYTE before[32], after[32];
    CK(mac_of(h, k, before));
    peer p;
    peer_start(&p);
    if (p.pid == 0) {
        static const char other[] = "other-pin";
        CK_SESSION_HANDLE ch = child_session(s, true);
        int ok = f->C_SetPIN(ch, (CK_UTF8CHAR_PTR)PIN, strlen(PIN), (CK_UTF8CHAR_PTR)other, strlen(other)) == CKR_OK;
        ok = ok && f->C_SetPIN(ch, (CK_UTF8CHAR_PTR)other, strlen(other), (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) == CKR_OK;
        put_byte(p.out, 'd');
        _exit(ok && f->C_Finalize(NULL) == CKR_OK ? 0 : 13);
    }
    unsigned long uses = 0;
    assert_int_equal(hammer_until_done(&p, h, k, &uses), 'd');
    peer_wait(&p);
    CK_SESSION_INFO si;
    CK(f->C_GetSessionInfo(h, &si));
    assert_int_equal(si.state, CKS_RW_USER_FUNCTIONS);
    CK(mac_of(h, k, after));
    assert_memory_equal(before, after, 32);
    CK(f->C_CloseAllSessions(s));
}

/* ---- a record edited on disk by another process --------------------------- */

/* A forked child (no module) flips a byte of the object's stored record and
 * commits: from then on the key is CKR_DEVICE_ERROR here, cached or not. */
static void tamper_elsewhere(CK_SLOT_ID s, CK_OBJECT_HANDLE o, long at)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ks_tamper *raw;
        int ok = ks_tamper_open(keystore, 0, &raw) == KS_OK;
        ok = ok && ks_tamper_flip_object(raw, (uint32_t)s, (uint64_t)o, at, 0x10) == KS_OK;
        ok = ok && ks_tamper_commit(raw) == KS_OK;
        _exit(ok ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void tampered_cached(long at)
{
    char label[32];
    if (test_pg_backend()) { /* ks_tamper edits LMDB's data.mdb */
        printf("SKIP: test_tampered_tag_cached: the record is damaged in LMDB's data.mdb (ks_tamper), not on the "
               "postgresql backend\n");
        return;
    }
    snprintf(label, sizeof(label), "tamper%ld", -at);
    own_keystore(label); /* damaged records would stop a rotation in the group's */
    CK_SLOT_ID s = make_token(label);
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_hmac(h, "victim"), pub, priv;
    make_ec(h, "victim-ec", true, &pub, &priv);
    CK_MECHANISM ec = {CKM_ECDSA_SHA256, NULL, 0};
    CK(use_hmac(h, k)); /* both cached, and found current at this reading */
    CK(f->C_SignInit(h, &ec, priv));
    CK(f->C_SignInit(h, &ec, priv) == CKR_OPERATION_ACTIVE ? CKR_OK : CKR_GENERAL_ERROR);
    CK_BYTE sig[80];
    CK_ULONG n = sizeof(sig);
    CK(f->C_Sign(h, (CK_BYTE_PTR) "x", 1, sig, &n));
    tamper_elsewhere(s, k, at);
    tamper_elsewhere(s, priv, at);
    RV(CKR_DEVICE_ERROR, use_hmac(h, k));
    RV(CKR_DEVICE_ERROR, f->C_SignInit(h, &ec, priv));
    CK(f->C_CloseAllSessions(s));
}

/* In the record's tag (its last bytes). */
static void test_tampered_tag_cached(void **state)
{
    (void)state;
    tampered_cached(-1);
}

/* ---- master-key rotation by p11mk-admin ---------------------------------- */

static void admin(const char *step)
{
    const char *adm = getenv("P11MK_ADMIN");
    if (!adm)
        skip();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(adm, adm, step, "--quiet", (char *)NULL);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("p11mk-admin %s: status 0x%x", step, status);
}

/* Each rotation step by p11mk-admin (another process) while a key is cached
 * here: the key stays the same key (same MAC) and usable; then it is
 * destroyed elsewhere and gone here. */
static void test_admin_rotation_steps(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("rotation");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_hmac(h, "rotated");
    CK_BYTE want[32], got[32];
    CK(mac_of(h, k, want));
    static const char *const steps[] = {"stage", "rewrap", "abort", "stage", "rewrap", "commit", "rotate"};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        admin(steps[i]);
        CK(mac_of(h, k, got));
        assert_memory_equal(want, got, 32);
        /* A change after the step is seen too. */
        CK_ATTRIBUTE off[] = {{CKA_SIGN, &no, 1}}, on[] = {{CKA_SIGN, &yes, 1}};
        peer p;
        peer_start(&p);
        if (p.pid == 0) {
            CK_SESSION_HANDLE ch = child_session(s, true);
            int ok = f->C_SetAttributeValue(ch, k, off, 1) == CKR_OK;
            _exit(ok && f->C_Finalize(NULL) == CKR_OK ? 0 : 13);
        }
        peer_wait(&p);
        RV(CKR_KEY_FUNCTION_NOT_PERMITTED, use_hmac(h, k));
        CK(f->C_SetAttributeValue(h, k, on, 1));
        CK(mac_of(h, k, got));
        assert_memory_equal(want, got, 32);
    }
    CK(f->C_CloseAllSessions(s));
}

/* ---- threads in this process --------------------------------------------- */

/* One thread signs all along; the main thread commits (or logs out) and,
 * once that returned, has the signer check its very next use. */
typedef struct {
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE k;
    atomic_int phase; /* 1: hammer; 2: main's change returned, check one use; 3: checked; 0: quit */
    CK_RV last;
    unsigned long uses;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} signer;

static void *signer_main(void *arg)
{
    signer *sg = arg;
    for (;;) {
        int ph = atomic_load(&sg->phase);
        if (ph == 0)
            return NULL;
        if (ph == 1) {
            (void)use_hmac(sg->h, sg->k);
            sg->uses++;
            continue;
        }
        if (ph == 2) {
            CK_RV rv = use_hmac(sg->h, sg->k);
            pthread_mutex_lock(&sg->mu);
            sg->last = rv;
            atomic_store(&sg->phase, 3);
            pthread_cond_signal(&sg->cv);
            pthread_mutex_unlock(&sg->mu);
        }
        pthread_mutex_lock(&sg->mu);
        while (atomic_load(&sg->phase) == 3)
            pthread_cond_wait(&sg->cv, &sg->mu);
        pthread_mutex_unlock(&sg->mu);
    }
}

static void signer_set(signer *sg, int ph)
{
    pthread_mutex_lock(&sg->mu);
    atomic_store(&sg->phase, ph);
    pthread_cond_broadcast(&sg->cv);
    pthread_mutex_unlock(&sg->mu);
}

/* Phase 2, and the result of the signer's checked use. */
static CK_RV signer_check(signer *sg)
{
    signer_set(sg, 2);
    pthread_mutex_lock(&sg->mu);
    while (atomic_load(&sg->phase) != 3)
        pthread_cond_wait(&sg->cv, &sg->mu);
    CK_RV rv = sg->last;
    pthread_mutex_unlock(&sg->mu);
    return rv;
}

static void signer_start(signer *sg, pthread_t *th, CK_SLOT_ID s, CK_OBJECT_HANDLE k)
{
    memset(sg, 0, sizeof(*sg));
    sg->h = user_session(s, true);
    sg->k = k;
    pthread_mutex_init(&sg->mu, NULL);
    pthread_cond_init(&sg->cv, NULL);
    atomic_store(&sg->phase, 1);
    assert_int_equal(pthread_create(th, NULL, signer_main, sg), 0);
}

static void signer_stop(signer *sg, pthread_t th)
{
    signer_set(sg, 0);
    pthread_join(th, NULL);
    pthread_mutex_destroy(&sg->mu);
    pthread_cond_destroy(&sg->cv);
}

/* CKA_SIGN toggled by another thread of this process. */
static void test_thread_sets_sign(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("thr-setattr");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_hmac(h, "thr-toggled");
    signer sg;
    pthread_t th;
    signer_start(&sg, &th, s, k);
    unsigned long stale = 0, failed = 0;
    for (int i = 0; i < 2 * ROUNDS; i++) {
        CK_BBOOL v = (i & 1) ? CK_TRUE : CK_FALSE;
        CK_ATTRIBUTE t[] = {{CKA_SIGN, &v, 1}};
        signer_set(&sg, 1);
        if (f->C_SetAttributeValue(h, k, t, 1) != CKR_OK)
            failed++;
        if (signer_check(&sg) != (v ? CKR_OK : CKR_KEY_FUNCTION_NOT_PERMITTED))
            stale++;
    }
    signer_stop(&sg, th); /* before any assertion: the thread must not outlive the test */
    assert_int_equal(failed, 0);
    if (stale)
        fail_msg("%lu of %d changes by another thread were not seen by the signer's next use (%lu uses)", stale,
                 2 * ROUNDS, sg.uses);
    CK(f->C_CloseAllSessions(s));
}

/* A key destroyed by another thread of this process. */
static void test_thread_destroys(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("thr-destroy");
    CK_SESSION_HANDLE h = user_session(s, true);
    unsigned long alive = 0;
    for (int i = 0; i < ROUNDS / 2; i++) {
        CK_OBJECT_HANDLE k = make_hmac(h, "thr-doomed");
        signer sg;
        pthread_t th;
        signer_start(&sg, &th, s, k);
        CK_RV drv = f->C_DestroyObject(h, k);
        CK_RV rv = signer_check(&sg);
        signer_stop(&sg, th);
        CK(drv);
        CK(f->C_CloseSession(sg.h));
        if (rv == CKR_OK)
            alive++;
        else
            RV(CKR_KEY_HANDLE_INVALID, rv);
    }
    if (alive)
        fail_msg("%lu of %d keys destroyed by another thread still signed", alive, ROUNDS / 2);
    CK(f->C_CloseAllSessions(s));
}

/* C_Logout by the main thread while another signs with a private key: its
 * first use after the logout returned fails; after C_Login it works. */
static void test_logout_while_signing(void **state)
{
    (void)state;
    CK_SLOT_ID s = make_token("logout");
    CK_SESSION_HANDLE h = user_session(s, true);
    CK_OBJECT_HANDLE k = make_hmac(h, "private-key");
    signer sg;
    pthread_t th;
    signer_start(&sg, &th, s, k);
    unsigned long usable = 0, other = 0;
    for (int i = 0; i < ROUNDS; i++) {
        signer_set(&sg, 1);
        CK_RV lo = f->C_Logout(h);
        CK_RV rv = signer_check(&sg);
        if (rv == CKR_OK)
            usable++;
        else if (lo != CKR_OK || (rv != CKR_KEY_HANDLE_INVALID && rv != CKR_USER_NOT_LOGGED_IN) ||
                 use_hmac(h, k) != CKR_KEY_HANDLE_INVALID)
            other++;
        if (f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) != CKR_OK)
            other++;
        signer_set(&sg, 1);
        if (signer_check(&sg) != CKR_OK)
            other++;
    }
    signer_stop(&sg, th); /* before any assertion: the thread must not outlive the test */
    if (usable || other)
        fail_msg("a private key signed %lu times after C_Logout returned; %lu other failures", usable, other);
    CK(f->C_CloseAllSessions(s));
}

/* ---- the map grown while keys are in use ---------------------------------- */

static void *grower_main(void *arg)
{
    CK_SESSION_HANDLE gh = *(CK_SESSION_HANDLE *)arg;
    static char big[3000];
    memset(big, 'g', sizeof(big));
    CK_OBJECT_CLASS cls = CKO_DATA;
    for (int i = 0; i < 150; i++) {
        CK_OBJECT_HANDLE o;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_VALUE, big, sizeof(big)}};
        if (f->C_CreateObject(gh, t, 3, &o) != CKR_OK)
            return (void *)1;
    }
    return NULL;
}

/* A keystore with a small map: a thread here and another process grow it
 * (adopt_resize) while threads sign; after each grower returned, a change
 * by the other process is still seen. For ASan and TSan. */
static void test_map_growth(void **state)
{
    (void)state;
    setenv("P11MK_MAPSIZE_INIT", "65536", 1);
    own_keystore("ks-small");
    CK_SLOT_ID s = make_token("small-map");
    CK_SESSION_HANDLE h = user_session(s, true), gh = user_session(s, true);
    CK_OBJECT_HANDLE k = make_hmac(h, "through-growth");
    signer sg[2];
    pthread_t th[2], gt;
    for (int i = 0; i < 2; i++)
        signer_start(&sg[i], &th[i], s, k);
    /* Another process grows it... */
    peer p;
    peer_start(&p);
    if (p.pid == 0) {
        CK_SESSION_HANDLE ch = child_session(s, true);
        if (grower_main(&ch))
            _exit(13);
        CK_ATTRIBUTE off[] = {{CKA_SIGN, &no, 1}};
        if (f->C_SetAttributeValue(ch, k, off, 1) != CKR_OK)
            _exit(14);
        put_byte(p.out, 'd');
        _exit(f->C_Finalize(NULL) == CKR_OK ? 0 : 15);
    }
    /* ... and so does this one. */
    assert_int_equal(pthread_create(&gt, NULL, grower_main, &gh), 0);
    void *grc;
    pthread_join(gt, &grc);
    assert_null(grc);
    assert_int_equal(get_byte(p.in), 'd');
    peer_wait(&p);
    CK_RV rv[2];
    for (int i = 0; i < 2; i++) {
        rv[i] = signer_check(&sg[i]);
        signer_stop(&sg[i], th[i]);
    }
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, rv[0]);
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, rv[1]);
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED, use_hmac(h, k));
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    assert_int_equal(count_found(h, t, 1), 300);
    if (test_pg_backend()) {
        printf("SKIP: test_map_growth: no map to outgrow on the postgresql backend (the writes and the change "
               "seen by the signers were checked)\n");
    } else {
        char data[200];
        struct stat sb;
        snprintf(data, sizeof(data), "%s/data.mdb", keystore);
        assert_int_equal(stat(data, &sb), 0);
        assert_true(sb.st_size > 4 * 65536); /* it did outgrow the first map */
    }
    CK(f->C_CloseAllSessions(s));
}

/* ---- group --------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_other_process_sets_sign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_process_destroys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_process_reinits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_process_changes_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_tag_cached, setup, teardown_own),
        cmocka_unit_test_setup_teardown(test_admin_rotation_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thread_sets_sign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thread_destroys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logout_while_signing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_growth, setup, teardown_own),
    };
    return cmocka_run_group_tests(tests, p11_group_setup, p11_group_teardown);
}
