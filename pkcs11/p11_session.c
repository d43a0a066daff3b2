/* p11mk pkcs11 layer: session table and login state. */
#include "p11_internal.h"
#include "token/tok_opstate.h"

#include <stdlib.h>

typedef struct {
    CK_SLOT_ID slot;
    CK_USER_TYPE who;
    uint64_t inc; /* the token's incarnation at login */
    uint64_t seq; /* the tok_change_seq() reading of the snapshot inc was last found current in */
} p11_login;

/* Sessions. A call finds its session without the global lock: every call
 * makes that lookup, and two threads taking one lock for it would share a
 * cache line on every operation.
 *
 * Each session lives in a numbered place whose struct, once made, stays
 * until C_Finalize; closing a session recycles its place for a later one.
 * A handle is (generation << P11_IDX_BITS) | (place + 1), the generation
 * counting the place's uses, so an old handle never names a new session.
 * A call holds its session's busy lock from lookup to put and takes no
 * other reference: the lookup locks the place's mutex (which lives as long
 * as the place) and then checks, under it, that the place is open and holds
 * its handle. A close marks the session closed as it unlinks it (global
 * lock), so no lookup finds it from then on, then takes its busy lock, so it
 * waits for a call that found it before, clears it, and only then frees the
 * place (global lock). A place is opened again without its busy lock: its
 * handle is written before `closed` is cleared (release), and a lookup reads
 * `closed` (acquire) before the handle, so a lookup that sees the place open
 * sees its new handle. A call pays one pair of locked instructions for its
 * session, the busy lock's. Everything else (the open list, free places,
 * logins, the generation and fields of a place at open) is under the global
 * lock; the busy lock is never taken with the global lock held. */
#define P11_IDX_BITS 20
#define P11_IDX_MAX ((1u << P11_IDX_BITS) - 1) /* sessions open at once */
#define P11_CHUNK 256u
#define P11_CHUNKS ((P11_IDX_MAX + P11_CHUNK - 1) / P11_CHUNK)

typedef struct {
    p11_session *s[P11_CHUNK]; /* set once each, read without the lock */
} place_chunk;

static struct {
    p11_session **v; /* the open sessions, for walks */
    size_t n, cap;
    uint32_t *free; /* recycled places; room for every place made */
    size_t nfree;
    uint32_t nplaces;
    place_chunk *chunks[P11_CHUNKS];
    p11_login *logins;
    size_t nlogins;
} t;



void p11_find_end(p11_find *f)
{
    for (CK_ULONG i = 0; i < f->n; i++)
        free(f->tmpl[i].pValue);
    free(f->tmpl);
    free(f->sobjs);
    free(f->cands);
    memset(f, 0, sizeof(*f));
}

/* What a session holds: its operations and a find. The place stays. */
static void session_clear(p11_session *s)
{
    for (int k = 0; k < P11_OP_SLOTS; k++) {
        p11_op_end(s, (tok_op_kind)k);
        tok_op_free(s->spare[k]);
        s->spare[k] = NULL;
    }
    for (int k = 0; k < P11_MSG_KINDS; k++)
        p11_msg_end(s, k);
    p11_find_end(&s->find);
}

void p11_sessions_free(bool orphaned)
{
    for (uint32_t i = 0; i < t.nplaces; i++) {
        p11_session *s = t.chunks[i / P11_CHUNK]->s[i % P11_CHUNK];

        if (!s)
            continue;
        if (orphaned) /* fork child: the busy mutex may be held by a parent thread */
            p11_state_abandon(s->busy);
        else
            p11_mutex_free(s->busy);
        session_clear(s);
        free(s);
    }
    for (size_t c = 0; c < P11_CHUNKS; c++)
        free(t.chunks[c]);
    free(t.v);
    free(t.free);
    free(t.logins);
    memset(&t, 0, sizeof(t));
}

static p11_session *place_of(CK_SESSION_HANDLE h)
{
    uint64_t idx = (uint64_t)h & P11_IDX_MAX;
    place_chunk *c;

    if (idx-- == 0)
        return NULL;
    c = __atomic_load_n(&t.chunks[idx / P11_CHUNK], __ATOMIC_ACQUIRE);
    return c ? __atomic_load_n(&c->s[idx % P11_CHUNK], __ATOMIC_ACQUIRE) : NULL;
}

CK_RV p11_session_get(CK_SESSION_HANDLE h, p11_session **out)
{
    p11_session *s;

    if (!p11_initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    s = place_of(h);
    /* A first look without the lock: a stale handle does not wait for the
     * call in flight on the place's new session. */
    if (!s || __atomic_load_n(&s->h, __ATOMIC_RELAXED) != h)
        return CKR_SESSION_HANDLE_INVALID;
    p11_mutex_lock(s->busy);
    /* closed first: see the top of the file. */
    if (__atomic_load_n(&s->closed, __ATOMIC_ACQUIRE) || __atomic_load_n(&s->h, __ATOMIC_ACQUIRE) != h) {
        p11_session_put(s);
        return CKR_SESSION_HANDLE_INVALID;
    }
    *out = s;
    return CKR_OK;
}

void p11_session_put(p11_session *s) { p11_mutex_unlock(s->busy); }

static p11_login *login_locked(CK_SLOT_ID slot)
{
    for (size_t i = 0; i < t.nlogins; i++)
        if (t.logins[i].slot == slot)
            return &t.logins[i];
    return NULL;
}

/* Who is logged in on a slot, for calls that find nothing committed since
 * it was last checked against the token's incarnation (p11_login_state):
 * read without the global lock, so that every operation does not take it.
 * A small table by slot; written under the global lock, its entries guarded
 * by a version that is odd while one is written (a reader that sees it odd
 * or changed takes the locked path). */
#define LOGIN_FAST 16
static struct {
    unsigned ver;
    CK_SLOT_ID slot; /* 0: empty */
    uint64_t seq;
    CK_USER_TYPE who;
} fast[LOGIN_FAST];

/* The fields are stored with release and loaded with acquire: a reader that
 * loads a field of a write in progress then sees the version changed. */
static void fast_write_locked(unsigned i, CK_SLOT_ID slot, uint64_t seq, CK_USER_TYPE who)
{
    unsigned v = __atomic_load_n(&fast[i].ver, __ATOMIC_RELAXED);

    __atomic_store_n(&fast[i].ver, v + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&fast[i].slot, slot, __ATOMIC_RELEASE);
    __atomic_store_n(&fast[i].seq, seq, __ATOMIC_RELEASE);
    __atomic_store_n(&fast[i].who, who, __ATOMIC_RELEASE);
    __atomic_store_n(&fast[i].ver, v + 2, __ATOMIC_RELEASE);
}

static void fast_set_locked(CK_SLOT_ID slot, uint64_t seq, CK_USER_TYPE who)
{
    fast_write_locked((unsigned)(slot % LOGIN_FAST), slot, seq, who);
}

static void fast_clear_locked(CK_SLOT_ID slot)
{
    unsigned i = (unsigned)(slot % LOGIN_FAST);

    if (__atomic_load_n(&fast[i].slot, __ATOMIC_RELAXED) == slot)
        fast_write_locked(i, 0, 0, P11_NOBODY);
}

void p11_sessions_init(void)
{
    memset(&t, 0, sizeof(t));
    memset(fast, 0, sizeof(fast)); /* no other thread is in the module */
}

/* true with *who when the entry for slot is current at seq. */
static bool fast_get(CK_SLOT_ID slot, uint64_t seq, CK_USER_TYPE *who)
{
    unsigned i = (unsigned)(slot % LOGIN_FAST);
    unsigned v = __atomic_load_n(&fast[i].ver, __ATOMIC_ACQUIRE);
    bool hit;

    if (v & 1)
        return false;
    hit = seq && __atomic_load_n(&fast[i].slot, __ATOMIC_ACQUIRE) == slot &&
          __atomic_load_n(&fast[i].seq, __ATOMIC_ACQUIRE) == seq;
    *who = __atomic_load_n(&fast[i].who, __ATOMIC_ACQUIRE);
    return hit && __atomic_load_n(&fast[i].ver, __ATOMIC_RELAXED) == v;
}

static void logout_locked(CK_SLOT_ID slot)
{
    p11_login *l = login_locked(slot);

    fast_clear_locked(slot);

    if (l) {
        *l = t.logins[--t.nlogins];
        tok_logout(p11_tok(), slot); /* the token key and private keys this process held */
    }
}

/* Logins live in this process, the token in the keystore: when any process
 * re-initializes or deletes the token, its incarnation changes and a login
 * made before ends here (as a hardware token forgets it on C_InitToken). A
 * failed read keeps the login: it is the token's change that ends it. */
static bool read_incarnation(CK_SLOT_ID slot, uint64_t *inc, uint64_t *seq)
{
    return tok_token_incarnation_at(p11_tok(), slot, inc, seq) == CKR_OK;
}

static p11_login *login_current_locked(CK_SLOT_ID slot, bool have, uint64_t inc)
{
    p11_login *l = login_locked(slot);

    if (l && have && l->inc != inc) {
        logout_locked(slot);
        l = NULL;
    }
    return l;
}

static CK_USER_TYPE login_state(CK_SLOT_ID slot, uint64_t *change);

tok_access p11_access(const p11_session *s)
{
    uint64_t seq = tok_logout_seq(p11_tok()); /* before who: see tok_access.login_seq */
    uint64_t change = 0;
    CK_USER_TYPE who = login_state(s->slot, &change);
    return (tok_access){.slot = s->slot, .rw = (s->flags & CKF_RW_SESSION) != 0, .who = who, .owner = s->h,
                        .login_seq = seq, .seq = change};
}

CK_USER_TYPE p11_login_state(CK_SLOT_ID slot)
{
    uint64_t change;
    return login_state(slot, &change);
}

/* *change: the commit sequence read first (tok_access.seq). */
static CK_USER_TYPE login_state(CK_SLOT_ID slot, uint64_t *change)
{
    CK_USER_TYPE who;
    uint64_t inc = 0, snap = 0, seq = *change = tok_change_seq(p11_tok());
    bool have;
    p11_login *l;

    /* Nothing committed since the slot's login (or that nobody is logged in
     * here) was last found current: no lock, no read. */
    if (fast_get(slot, seq, &who))
        return who;
    /* Nobody logged in here: nothing to compare with the token's incarnation. */
    p11_lock();
    l = login_locked(slot);
    if (!l || (seq && l->seq == seq)) {
        who = l ? l->who : P11_NOBODY;
        fast_set_locked(slot, seq, who);
        p11_unlock();
        return who;
    }
    p11_unlock();
    /* snap is the reading of the snapshot the incarnation comes from: seq
     * may be ahead of it. */
    have = read_incarnation(slot, &inc, &snap);
    p11_lock();
    l = login_current_locked(slot, have, inc);
    if (l && have) {
        l->seq = snap;
        fast_set_locked(slot, snap, l->who);
    }
    who = l ? l->who : P11_NOBODY;
    p11_unlock();
    return who;
}

CK_STATE p11_session_state(const p11_session *s)
{
    CK_USER_TYPE who = p11_login_state(s->slot);
    bool rw = s->flags & CKF_RW_SESSION;

    if (who == CKU_SO)
        return CKS_RW_SO_FUNCTIONS;
    if (who == CKU_USER)
        return rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
    return rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
}

/* Whether session h is open (global lock held). */
static bool open_locked(CK_SESSION_HANDLE h)
{
    for (size_t i = 0; i < t.n; i++)
        if (t.v[i]->h == h)
            return true;
    return false;
}

static CK_ULONG count_locked(CK_SLOT_ID slot, bool rw_only)
{
    CK_ULONG n = 0;

    for (size_t i = 0; i < t.n; i++)
        if (t.v[i]->slot == slot && (!rw_only || (t.v[i]->flags & CKF_RW_SESSION)))
            n++;
    return n;
}

CK_ULONG p11_session_count(CK_SLOT_ID slot, bool rw_only)
{
    CK_ULONG n;

    p11_lock();
    n = count_locked(slot, rw_only);
    p11_unlock();
    return n;
}

void p11_op_end(p11_session *s, tok_op_kind kind)
{
    tok_op_end(s->op[kind], &s->spare[kind]);
    s->op[kind] = NULL;
    s->op_multi[kind] = false;
    s->op_single[kind] = false;
    s->op_reauth[kind] = false;
}

void p11_msg_end(p11_session *s, int kind)
{
    if (kind < P11_MSG_SIGN) {
        tok_msg_free(s->msg[kind]);
        s->msg[kind] = NULL;
    } else {
        tok_msgmac_free(s->mac[kind - P11_MSG_SIGN]);
        s->mac[kind - P11_MSG_SIGN] = NULL;
    }
}

/* A place for a new session (global lock held): a recycled one, or a new
 * one with its struct and busy mutex. NULL when out of memory or places. */
static p11_session *place_take_locked(CK_RV *rv)
{
    p11_session *s;
    uint32_t idx;
    place_chunk **c;

    if (t.nfree)
        return t.chunks[t.free[t.nfree - 1] / P11_CHUNK]->s[t.free[t.nfree - 1] % P11_CHUNK];
    *rv = CKR_HOST_MEMORY;
    if (t.nplaces == P11_IDX_MAX)
        return NULL;
    idx = t.nplaces;
    c = &t.chunks[idx / P11_CHUNK];
    if (!*c) {
        place_chunk *n = calloc(1, sizeof(*n));
        if (!n)
            return NULL;
        __atomic_store_n(c, n, __ATOMIC_RELEASE);
    }
    if (idx % 64 == 0) { /* room in the free list for every place */
        uint32_t *f = realloc(t.free, (idx + 64) * sizeof(*f));
        if (!f)
            return NULL;
        t.free = f;
    }
    if (!(s = calloc(1, sizeof(*s))))
        return NULL;
    if ((*rv = p11_mutex_new(&s->busy)) != CKR_OK) {
        free(s);
        return NULL;
    }
    s->idx = idx;
    s->closed = true; /* until C_OpenSession gives it a handle */
    __atomic_store_n(&(*c)->s[idx % P11_CHUNK], s, __ATOMIC_RELEASE);
    t.free[t.nfree++] = idx;
    t.nplaces++;
    *rv = CKR_OK;
    return s;
}

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                    CK_SESSION_HANDLE_PTR phSession)
{
    p11_session *s = NULL;
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    return_val_if_fail(phSession != NULL, CKR_ARGUMENTS_BAD);
    return_val_if_fail(flags & CKF_SERIAL_SESSION, CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    rv = tok_slot_check(p11_tok(), slotID);
    if (rv != CKR_OK)
        return rv;
    if ((flags & CKF_RW_SESSION) && tok_ctx_readonly(p11_tok()))
        return CKR_TOKEN_WRITE_PROTECTED;
    p11_lock();
    if (!(flags & CKF_RW_SESSION) && login_locked(slotID) && login_locked(slotID)->who == CKU_SO) {
        rv = CKR_SESSION_READ_WRITE_SO_EXISTS;
    } else if (t.n == t.cap) {
        size_t cap = t.cap ? t.cap * 2 : 16;
        p11_session **v = realloc(t.v, cap * sizeof(*v));

        if (v) {
            t.v = v;
            t.cap = cap;
        } else {
            rv = CKR_HOST_MEMORY;
        }
    }
    if (rv == CKR_OK && (s = place_take_locked(&rv)) != NULL) {
        CK_SESSION_HANDLE h;

        t.nfree--;
        s->gen++;
        h = (CK_SESSION_HANDLE)((s->gen << P11_IDX_BITS) | (s->idx + 1u));
        if (h <= P11_IDX_MAX) /* CK_ULONG narrower than the generation: wrap, keep the place */
            s->gen = 1, h = (CK_SESSION_HANDLE)(((uint64_t)1 << P11_IDX_BITS) | (s->idx + 1u));
        s->slot = slotID;
        s->flags = flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
        __atomic_store_n(&s->h, h, __ATOMIC_RELAXED);
        __atomic_store_n(&s->closed, false, __ATOMIC_RELEASE); /* after h: now it can be found */
        t.v[t.n++] = s;
        *phSession = h;
    }
    p11_unlock();
    return rv;
}

/* Unlink a session (global lock held): no lookup finds it from here on;
 * the caller then closes it. */
static void unlink_locked(size_t i)
{
    p11_session *s = t.v[i];

    t.v[i] = t.v[--t.n];
    __atomic_store_n(&s->closed, true, __ATOMIC_RELEASE);
    if (count_locked(s->slot, false) == 0)
        logout_locked(s->slot);
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
    p11_session *s = NULL;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    p11_lock();
    for (size_t i = 0; i < t.n; i++) {
        if (t.v[i]->h == hSession) {
            s = t.v[i];
            unlink_locked(i);
            break;
        }
    }
    p11_unlock();
    if (s) {
        /* A call on it in flight (one that found it before the unlink) ends
         * first. */
        p11_mutex_lock(s->busy);
        session_clear(s);
        p11_mutex_unlock(s->busy);
        /* Each session's objects go with it, those the last call made too;
         * no slot-wide drop here, which could hit a session opened
         * meanwhile. */
        tok_sobjs_drop_owner(p11_tok(), hSession);
        p11_lock();
        t.free[t.nfree++] = s->idx; /* room was made when the place was */
        p11_unlock();
    }
    return s ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
    CK_RV rv;

    return_val_if_fail(p11_initialized(), CKR_CRYPTOKI_NOT_INITIALIZED);
    rv = p11_slot_known(slotID); /* an uninitialized token has none to close: CKR_OK */
    if (rv != CKR_OK)
        return rv;
    for (;;) {
        CK_SESSION_HANDLE h = 0;

        p11_lock();
        for (size_t i = 0; i < t.n && !h; i++)
            if (t.v[i]->slot == slotID)
                h = t.v[i]->h;
        p11_unlock();
        if (!h)
            break;
        /* Closed meanwhile by another thread: look again. A C_Finalize
         * under way (it waits for this call, p11_gate_drain) makes every
         * close CKR_CRYPTOKI_NOT_INITIALIZED: that ends the loop. */
        rv = C_CloseSession(h);
        if (rv != CKR_OK && rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_SESSION_CLOSED)
            return rv;
    }
    /* No slot-wide drop of session objects: each close dropped its own
     * (after the last call on it), and one here would take those of a
     * session another thread opened since the last look (races/closeall_sobj). */
    return CKR_OK;
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pInfo) {
        p11_session_put(s);
        return CKR_ARGUMENTS_BAD;
    }
    pInfo->slotID = s->slot;
    pInfo->state = p11_session_state(s);
    pInfo->flags = s->flags;
    pInfo->ulDeviceError = 0;
    p11_session_put(s);
    return CKR_OK;
}

/* C_Login(CKU_CONTEXT_SPECIFIC): the user's PIN again, for the sign or
 * decrypt operation just started with a CKA_ALWAYS_AUTHENTICATE key. A wrong
 * PIN counts towards the lock-out and leaves the operation waiting. */
static CK_RV login_context(p11_session *s, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    static const tok_op_kind kinds[] = {TOK_OP_SIGN, TOK_OP_DECRYPT};
    CK_RV rv = CKR_OPERATION_NOT_INITIALIZED;

    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (s->op[kinds[i]] && s->op_reauth[kinds[i]])
            rv = CKR_OK;
    if (rv == CKR_OK && !pPin)
        rv = CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK && p11_login_state(s->slot) != CKU_USER)
        rv = CKR_USER_NOT_LOGGED_IN;
    if (rv == CKR_OK)
        rv = tok_login_check(p11_tok(), s->slot, CKU_USER, pPin, ulPinLen);
    if (rv == CKR_OK)
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
            s->op_reauth[kinds[i]] = false;
    p11_session_put(s);
    return rv;
}

static CK_RV login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);
    p11_login *l;
    CK_SLOT_ID slot;

    if (rv != CKR_OK)
        return rv;
    slot = s->slot;
    if (userType == CKU_CONTEXT_SPECIFIC)
        return login_context(s, pPin, ulPinLen); /* puts s */
    p11_session_put(s);
    if (userType != CKU_SO && userType != CKU_USER)
        return CKR_USER_TYPE_INVALID;
    if (!pPin)
        return CKR_ARGUMENTS_BAD; /* no protected authentication path: a PIN is needed */
    /* Read before the PIN check: a re-initialization in between ends this login. */
    uint64_t inc = 0;
    bool have = read_incarnation(slot, &inc, NULL);
    p11_lock();
    l = login_current_locked(slot, have, inc);
    if (l)
        rv = l->who == userType ? CKR_USER_ALREADY_LOGGED_IN : CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
    else if (userType == CKU_SO && count_locked(slot, false) != count_locked(slot, true))
        rv = CKR_SESSION_READ_ONLY_EXISTS;
    p11_unlock();
    if (rv != CKR_OK)
        return rv;
    rv = tok_login_check(p11_tok(), slot, userType, pPin, ulPinLen);
    if (rv != CKR_OK)
        return rv;
    p11_lock();
    if ((l = login_locked(slot))) { /* lost a race with another thread */
        rv = l->who == userType ? CKR_USER_ALREADY_LOGGED_IN : CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
    } else if (!open_locked(hSession)) {
        /* Closed during the PIN check (its slot's last session, say, which
         * logged the slot out): a login recorded now would belong to no
         * session, and the next session opened would be logged in. */
        rv = CKR_SESSION_CLOSED;
        tok_logout(p11_tok(), slot);
    } else if (userType == CKU_SO && count_locked(slot, false) != count_locked(slot, true)) {
        rv = CKR_SESSION_READ_ONLY_EXISTS; /* opened during the PIN check */
        tok_logout(p11_tok(), slot);
    } else {
        p11_login *v = realloc(t.logins, (t.nlogins + 1) * sizeof(*v));

        if (v) {
            t.logins = v;
            t.logins[t.nlogins++] = (p11_login){.slot = slot, .who = userType, .inc = have ? inc : 0};
            fast_clear_locked(slot); /* it may say nobody */
        } else {
            rv = CKR_HOST_MEMORY;
            tok_logout(p11_tok(), slot); /* the token key the check left in memory */
        }
    }
    p11_unlock();
    return rv;
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    return login(hSession, userType, pPin, ulPinLen);
}

CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                  CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen);
CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                  CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
    /* This token has no named users: a user name is not accepted. */
    if (ulUsernameLen || pUsername)
        return p11_initialized() ? CKR_ARGUMENTS_BAD : CKR_CRYPTOKI_NOT_INITIALIZED;
    return login(hSession, userType, pPin, ulPinLen);
}

/* After a logout: the private keys the slot's sessions keep in their spare
 * operations (tok_op_end) go, as the key cache's did. Each session is taken
 * as a call takes it, after the global lock (a call holding its session may
 * want that lock); one closed meanwhile is passed over. An operation still
 * running keeps its key, as PKCS#11 lets it; tok_op_start drops a spare from
 * before the logout that this missed. */
static void drop_private_spares(CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE *hs;
    size_t n = 0;

    p11_lock();
    hs = t.n ? malloc(t.n * sizeof(*hs)) : NULL;
    for (size_t i = 0; hs && i < t.n; i++)
        if (t.v[i]->slot == slot)
            hs[n++] = t.v[i]->h;
    p11_unlock();
    for (size_t i = 0; i < n; i++) {
        p11_session *s;

        if (p11_session_get(hs[i], &s) != CKR_OK)
            continue;
        for (int k = 0; k < P11_OP_SLOTS; k++)
            if (tok_op_spare_private(s->spare[k])) {
                tok_op_free(s->spare[k]);
                s->spare[k] = NULL;
            }
        p11_session_put(s);
    }
    free(hs);
}

CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);
    CK_SLOT_ID slot;

    if (rv != CKR_OK)
        return rv;
    slot = s->slot;
    p11_session_put(s);
    p11_lock();
    if (!open_locked(hSession))
        rv = CKR_SESSION_CLOSED; /* closed meanwhile: the slot's login now may be a later session's */
    else if (login_locked(slot))
        logout_locked(slot);
    else
        rv = CKR_USER_NOT_LOGGED_IN;
    p11_unlock();
    if (rv == CKR_OK)
        drop_private_spares(slot);
    return rv;
}

CK_RV C_SessionCancel(CK_SESSION_HANDLE hSession, CK_FLAGS flags);
CK_RV C_SessionCancel(CK_SESSION_HANDLE hSession, CK_FLAGS flags)
{
    static const struct {
        CK_FLAGS flag;
        tok_op_kind kind;
        bool recover; /* signing and verifying with recovery take the sign and verify slots */
    } map[] = {{CKF_ENCRYPT, TOK_OP_ENCRYPT, false}, {CKF_DECRYPT, TOK_OP_DECRYPT, false},
               {CKF_SIGN, TOK_OP_SIGN, false},       {CKF_SIGN_RECOVER, TOK_OP_SIGN, true},
               {CKF_VERIFY, TOK_OP_VERIFY, false},   {CKF_VERIFY_RECOVER, TOK_OP_VERIFY, true},
               {CKF_DIGEST, TOK_OP_DIGEST, false}};
    static const CK_FLAGS msg_flag[P11_MSG_KINDS] = {CKF_MESSAGE_ENCRYPT, CKF_MESSAGE_DECRYPT, CKF_MESSAGE_SIGN,
                                                     CKF_MESSAGE_VERIFY};
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if ((flags & map[i].flag) && s->op[map[i].kind] && tok_op_is_recover(s->op[map[i].kind]) == map[i].recover)
            p11_op_end(s, map[i].kind);
    for (int k = 0; k < P11_MSG_KINDS; k++)
        if (flags & msg_flag[k])
            p11_msg_end(s, k);
    if (flags & CKF_FIND_OBJECTS)
        p11_find_end(&s->find);
    p11_session_put(s);
    return CKR_OK;
}

/* The state of the session's operations (tok_opstate.h: what is saved, how
 * it is sealed). Neither call ends an operation when it fails. */
CK_RV C_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG_PTR pulOperationStateLen)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    /* A message-based operation cannot be saved (tok_opstate.h): its state
     * is counters and IVs no replay can give back. */
    bool unsaveable = s->msg[0] || s->msg[1] || s->mac[0] || s->mac[1];
    /* Nor one a single-part call left active (a size query): its state is
     * that call's input, which the saved state would not carry (op_single
     * is not saved; restored, a final would work on nothing). */
    for (int k = TOK_OP_ENCRYPT; k < TOK_OPSTATE_KINDS; k++)
        unsaveable = unsaveable || s->op_single[k];
    rv = !pulOperationStateLen ? CKR_ARGUMENTS_BAD
         : unsaveable          ? CKR_STATE_UNSAVEABLE
                               : tok_opstate_save(p11_tok(), s->slot, s->op, s->op_multi, pOperationState,
                                                  pulOperationStateLen);
    p11_session_put(s);
    return rv;
}

/* The session's operations become the saved ones (those it had end). */
CK_RV C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG ulOperationStateLen,
                          CK_OBJECT_HANDLE hEncryptionKey, CK_OBJECT_HANDLE hAuthenticationKey)
{
    tok_op *ops[TOK_OPSTATE_KINDS] = {NULL};
    bool multi[TOK_OPSTATE_KINDS] = {false};
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    if (!pOperationState) {
        rv = CKR_ARGUMENTS_BAD;
    } else {
        tok_access ac = p11_access(s);
        rv = tok_opstate_restore(p11_tok(), &ac, pOperationState, ulOperationStateLen, hEncryptionKey,
                                 hAuthenticationKey, ops, multi);
    }
    for (int k = TOK_OP_ENCRYPT; rv == CKR_OK && k < TOK_OPSTATE_KINDS; k++) {
        p11_op_end(s, (tok_op_kind)k);
        s->op[k] = ops[k];
        s->op_multi[k] = multi[k];
    }
    p11_session_put(s);
    return rv;
}

CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    p11_session_put(s);
    return CKR_FUNCTION_NOT_PARALLEL;
}

CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession)
{
    p11_session *s;
    CK_RV rv = p11_session_get(hSession, &s);

    if (rv != CKR_OK)
        return rv;
    p11_session_put(s);
    return CKR_FUNCTION_NOT_PARALLEL;
}
