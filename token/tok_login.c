/* p11mk token layer: PINs (C_Login, C_InitToken, C_InitPIN, C_SetPIN), their
 * failure counters and the token key they unlock.
 *
 * Crash and race rules (each is tested: tests/integration/test_pin_lockout.sh):
 * - Count first, verify after. An attempt is reserved by a committed write
 *   (the role's counter goes up) before scrypt looks at the PIN. A second
 *   write after the check clears the counter (right PIN) or rewrites the
 *   record as it is (wrong PIN): right and wrong PINs write alike. A process
 *   killed after the reservation has spent its try whatever it learns; one
 *   killed before it commits learns nothing, the PIN was not looked at.
 * - From the reservation to the second write, attempts on one token are
 *   serialized across threads, processes and the hosts that share the
 *   storage (ks_attempt_lock; tests/integration/test_pg_pin_fleet.sh), and every
 *   change of a PIN record takes the same lock, so no more attempts than
 *   the tries left are ever in flight and the second write finds the record
 *   the PIN was checked against (compared, refused if not).
 * - The token key (TOK_TK_LEN random bytes) is made with the token (or at
 *   the first login of a token made before PIN binding), is kept wrapped in
 *   each role's PIN record and changes only with C_InitToken. A process
 *   keeps the key of a token it logged in to, tagged with the token's
 *   incarnation, until logout; every key taken from a record or handed on
 *   is compared with the check value the token keeps (TOKR_TK_KCV).
 * - Upgrade of a token made before PIN binding (PIN records v1, private
 *   objects outside envelopes): the first successful login of either role
 *   makes the token key, wraps it in that role's record, puts every private
 *   object into its envelope and keeps the key escrowed (under the master
 *   key seal only, TOKR_TK_ESCROW) for the other role, all in one write
 *   transaction; the other role's first login wraps it and the escrow goes. */
#include "tok_internal.h"
#include "tok_envelope.h"
#include "tok_pin.h"
#include "token/tok_policy.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

/* How long an attempt waits for the one before it (which takes about one
 * scrypt, ~50 ms, unless its process was stopped). */
#define ATTEMPT_WAIT_MS 60000u

enum { ROLE_SO = 0, ROLE_USER = 1 };

static unsigned role_of(CK_USER_TYPE who) { return who == CKU_SO ? ROLE_SO : ROLE_USER; }
static const char *role_name(unsigned role) { return role == ROLE_SO ? "SO" : "user"; }
static CK_ATTRIBUTE_TYPE pin_field(unsigned role) { return role == ROLE_SO ? TOKR_SO_PIN : TOKR_USER_PIN; }
static CK_ATTRIBUTE_TYPE fails_field(unsigned role) { return role == ROLE_SO ? TOKR_SO_FAILS : TOKR_USER_FAILS; }

/* NULL is never a PIN here (no protected authentication path); a length
 * outside the token's range cannot be right. Neither is an attempt. */
static CK_RV pin_args(const uint8_t *pin, CK_ULONG len)
{
    if (!pin)
        return CKR_ARGUMENTS_BAD;
    if (len < TOK_PIN_MIN_LEN || len > TOK_PIN_MAX_LEN)
        return CKR_PIN_LEN_RANGE;
    return CKR_OK;
}

void tok_logout(tok_ctx *ctx, CK_SLOT_ID slot)
{
    tok_tk_drop(ctx, slot);
    tok_cache_drop_private(ctx, slot);
    tok_sobjs_drop_private(ctx, slot);
}

CK_RV tok_token_binding(tok_ctx *ctx, CK_SLOT_ID slot, tok_binding *b, CK_USER_TYPE *waiting)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = tok_token_load(ctx, slot, &rec);

    if (rv != CKR_OK)
        return rv;
    *waiting = TOK_NOBODY;
    if (!tok_attrs_find(&rec, TOKR_TK_KCV)) {
        *b = TOK_BIND_NONE;
    } else if (tok_attrs_find(&rec, TOKR_TK_ESCROW)) {
        const tok_attr *so = tok_attrs_find(&rec, TOKR_SO_PIN);
        *b = TOK_BIND_ESCROW;
        *waiting = so && so->len != TOK_PIN_REC_LEN ? CKU_SO : CKU_USER;
    } else {
        *b = TOK_BIND_FULL;
    }
    return CKR_OK;
}

/* ---- the token record inside a transaction ----------------------------- */

static int rec_get(ks_txn *txn, uint32_t tid, tok_attrs *rec)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = ks_token_get(txn, tid, &blob, &len);

    if (rc != KS_OK)
        return rc;
    rc = tok_attrs_parse(blob, len, rec);
    rc = rc == 0 ? KS_OK : rc == TOK_ATTRS_NOMEM ? KS_ENOMEM : KS_ECORRUPT;
    ks_buf_free(blob, len);
    return rc;
}

static bool kcv_matches(const tok_attrs *rec, const uint8_t tk[TOK_TK_LEN])
{
    const tok_attr *kcv = tok_attrs_find(rec, TOKR_TK_KCV);
    uint8_t want[TOK_TK_KCV_LEN];

    return kcv && kcv->len == TOK_TK_KCV_LEN && tok_tk_kcv(tk, want) == 0 &&
           CRYPTO_memcmp(want, kcv->val, TOK_TK_KCV_LEN) == 0;
}

static int set_kcv(tok_attrs *rec, const uint8_t tk[TOK_TK_LEN])
{
    uint8_t kcv[TOK_TK_KCV_LEN];

    if (tok_tk_kcv(tk, kcv) != 0)
        return KS_EIO;
    return tok_attrs_set(rec, TOKR_TK_KCV, kcv, sizeof(kcv)) == 0 ? KS_OK : KS_ENOMEM;
}

static int set_pin_rec(tok_attrs *rec, unsigned role, const tok_pin_key *k, const uint8_t tk[TOK_TK_LEN],
                       uint32_t tid)
{
    uint8_t r[TOK_PIN_REC_LEN];
    int rc;

    if (tok_pin_seal(k, tk, tid, role, r) != 0)
        return KS_EIO;
    rc = tok_attrs_set(rec, pin_field(role), r, sizeof(r)) == 0 ? KS_OK : KS_ENOMEM;
    OPENSSL_cleanse(r, sizeof(r));
    return rc;
}

/* The escrow goes once every PIN record the token has wraps the key. */
static void escrow_tidy(tok_attrs *rec)
{
    for (unsigned role = ROLE_SO; role <= ROLE_USER; role++) {
        const tok_attr *p = tok_attrs_find(rec, pin_field(role));
        if (p && p->len != TOK_PIN_REC_LEN)
            return;
    }
    tok_attrs_remove(rec, TOKR_TK_ESCROW);
}

/* An object's attributes as stored (its envelope, if any, unopened). */
static int obj_get_attrs(ks_txn *txn, uint32_t tid, uint64_t oid, tok_attrs *a)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = ks_obj_get(txn, tid, oid, &blob, &len);

    if (rc != KS_OK)
        return rc;
    rc = tok_attrs_parse(blob, len, a);
    rc = rc == 0 ? KS_OK : rc == TOK_ATTRS_NOMEM ? KS_ENOMEM : KS_ECORRUPT;
    ks_buf_free(blob, len);
    return rc;
}

/* Put every private object of the token that is outside an envelope into
 * one (the upgrade of a token made before PIN binding). */
static int envelope_all(ks_txn *txn, uint32_t tid, const uint8_t tk[TOK_TK_LEN], size_t *count)
{
    tok_oid_vec o = {NULL, 0, 0};
    int rc = ks_obj_foreach(txn, tid, tok_oid_push, &o);

    *count = 0;
    /* One pass, in the caller's write transaction (a refusal aborts it all).
     * A token made before PIN binding has no envelope yet. One that has
     * envelopes but no key check value lost it to someone holding only the
     * master key, who wants the next key escrowed where they can read it. */
    for (size_t i = 0; rc == KS_OK && i < o.n; i++) {
        tok_attrs a = TOK_ATTRS_INIT;
        uint8_t *blob = NULL;
        size_t len = 0;

        rc = obj_get_attrs(txn, tid, o.v[i], &a);
        if (rc == KS_OK && tok_env_present(&a)) {
            tok_attrs_free(&a);
            ks_log(KS_LOG_ERROR, "token %u: its objects are in envelopes under a token key, but the token record "
                   "no longer names that key: the token record was altered (with the master key); not binding a "
                   "new key. Restore the keystore from a backup", tid);
            rc = KS_ECORRUPT;
            break;
        }
        if (rc == KS_OK && tok_obj_is_private(&a)) {
            rc = tok_env_seal(tk, tid, o.v[i], &a, &a) == 0 ? KS_OK : KS_ENOMEM;
            if (rc == KS_OK)
                rc = tok_attrs_serialize(&a, &blob, &len) == 0 ? KS_OK : KS_ENOMEM;
            if (rc == KS_OK)
                rc = ks_obj_put(txn, tid, o.v[i], blob, len);
            if (blob)
                ks_buf_free(blob, len);
            (*count)++;
        }
        tok_attrs_free(&a);
        if (rc != KS_OK)
            ks_log(KS_LOG_ERROR, "token %u object %llu: cannot be put into its envelope (%s)", tid,
                   (unsigned long long)o.v[i], ks_strerror(rc));
    }
    free(o.v);
    return rc;
}

/* Make sure the token has a key, that *tk is it and that role's record wraps
 * it (see the upgrade rule at the top). k: the role's PIN key (NULL when the
 * role's record is not to be touched). */
static int bind_token(ks_txn *txn, uint32_t tid, tok_attrs *rec, unsigned role, const tok_pin_key *k, bool *have_tk,
                      uint8_t tk[TOK_TK_LEN])
{
    /* Only the length: setting attributes below may move the list. */
    const tok_attr *own = tok_attrs_find(rec, pin_field(role));
    bool own_wraps = own && own->len == TOK_PIN_REC_LEN;
    int rc;

    if (!tok_attrs_find(rec, TOKR_TK_KCV)) {
        size_t n = 0;

        if (*have_tk) {
            ks_log(KS_LOG_ERROR, "token %u: the %s PIN record wraps a token key the token does not know: the "
                   "token record was altered; restore the keystore from a backup", tid, role_name(role));
            return KS_ECORRUPT;
        }
        if (RAND_bytes_ex(ks_libctx(), tk, TOK_TK_LEN, 0) != 1)
            return KS_EIO;
        *have_tk = true;
        if ((rc = set_kcv(rec, tk)) != KS_OK)
            return rc;
        if (tok_attrs_find(rec, pin_field(!role)) && tok_attrs_set(rec, TOKR_TK_ESCROW, tk, TOK_TK_LEN) != 0)
            return KS_ENOMEM;
        if ((rc = envelope_all(txn, tid, tk, &n)) != KS_OK)
            return rc;
        ks_log(KS_LOG_INFO, "token %u: private objects bound to the PINs at the %s's login (%zu put into "
               "envelopes under the new token key)", tid, role_name(role), n);
        if (tok_attrs_find(rec, TOKR_TK_ESCROW))
            ks_log(KS_LOG_WARN, "token %u: until the %s logs in once, the token key is also kept under the master "
                   "key alone (p11mk-admin status shows it): log in once as %s", tid, role_name(!role),
                   role_name(!role));
    } else if (!*have_tk) {
        const tok_attr *esc = tok_attrs_find(rec, TOKR_TK_ESCROW);

        if (!esc || esc->len != TOK_TK_LEN) {
            ks_log(KS_LOG_ERROR, "token %u: the %s PIN record wraps no token key and none is kept for it: the "
                   "token record was altered; restore the keystore from a backup", tid, role_name(role));
            return KS_ECORRUPT;
        }
        memcpy(tk, esc->val, TOK_TK_LEN);
        *have_tk = true;
    }
    if (!kcv_matches(rec, tk)) {
        ks_log(KS_LOG_ERROR, "token %u: the token key does not match its check value: the token record was "
               "altered; restore the keystore from a backup", tid);
        return KS_ECORRUPT;
    }
    if (k && !own_wraps && (rc = set_pin_rec(rec, role, k, tk, tid)) != KS_OK)
        return rc;
    escrow_tidy(rec);
    return KS_OK;
}

/* ---- one attempt -------------------------------------------------------- */

typedef enum { ACT_LOGIN, ACT_SETPIN, ACT_INITTOKEN } attempt_act;

typedef struct {
    uint32_t tid;
    unsigned role;
    bool count;                  /* write the reservation (false: read-only keystore) */
    CK_RV verdict;               /* no try made: CKR_PIN_LOCKED, CKR_USER_PIN_NOT_INITIALIZED, ... */
    CK_ULONG fails;              /* the counter with this attempt */
    uint8_t rec[TOK_PIN_REC_LEN]; /* the record the PIN is checked against */
    size_t rec_len;
} reserve;

static int reserve_fn(ks_txn *txn, void *arg)
{
    reserve *r = arg;
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    const tok_attr *h;
    CK_ULONG fails = 0;
    int rc = rec_get(txn, r->tid, &rec);

    r->verdict = CKR_OK;
    if (rc != KS_OK)
        return rc;
    h = tok_attrs_find(&rec, pin_field(r->role));
    if (!h) {
        r->verdict = r->role == ROLE_SO ? CKR_DEVICE_ERROR : CKR_USER_PIN_NOT_INITIALIZED;
        return KS_EEXIST; /* abort: nothing to write */
    }
    if (h->len > sizeof(r->rec)) {
        r->verdict = CKR_DEVICE_ERROR;
        return KS_EEXIST;
    }
    memcpy(r->rec, h->val, h->len);
    r->rec_len = h->len;
    tok_attrs_get_ulong(&rec, fails_field(r->role), &fails);
    if (fails >= TOK_MAX_PIN_TRIES) {
        r->verdict = CKR_PIN_LOCKED;
        return KS_EEXIST;
    }
    r->fails = fails + 1;
    if (!r->count)
        return KS_EEXIST;
    if (tok_attrs_set_ulong(&rec, fails_field(r->role), fails + 1) != 0)
        return KS_ENOMEM;
    return tok_token_put(txn, r->tid, &rec);
}

typedef struct {
    tok_ctx *ctx;
    uint32_t tid;
    unsigned role;
    attempt_act act;
    bool ok;                      /* the PIN was right */
    const reserve *r;
    const tok_pin_key *k;         /* the PIN's key (ok) */
    const tok_pin_key *newk;      /* ACT_SETPIN: the new PIN's */
    const uint8_t *label;         /* ACT_INITTOKEN */
    bool unwrapped;               /* tk was unwrapped from the role's record */
    bool have_tk;                 /* out: tk is the token key */
    uint8_t tk[TOK_TK_LEN];
    uint64_t inc;                 /* out: the token's incarnation */
} finish;

static int reinit_token(ks_txn *txn, finish *f)
{
    AUTO_ATTRS fresh = TOK_ATTRS_INIT;
    int rc;

    /* The same SO PIN, a new token key: what was sealed under the old one
     * goes with the objects. */
    if (RAND_bytes_ex(ks_libctx(), f->tk, TOK_TK_LEN, 0) != 1)
        return KS_EIO;
    if ((rc = set_pin_rec(&fresh, ROLE_SO, f->k, f->tk, f->tid)) != KS_OK || (rc = set_kcv(&fresh, f->tk)) != KS_OK)
        return rc;
    if (tok_attrs_set_ulong(&fresh, TOKR_SO_FAILS, 0) != 0 || tok_attrs_set(&fresh, TOKR_LABEL, f->label, 32) != 0)
        return KS_ENOMEM;
    rc = ks_token_del(txn, f->tid);
    if (rc != KS_OK && rc != KS_ENOTFOUND)
        return rc;
    return tok_token_put(txn, f->tid, &fresh);
}

static int finish_fn(ks_txn *txn, void *arg)
{
    finish *f = arg;
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    const tok_attr *h;
    int rc = rec_get(txn, f->tid, &rec);

    f->have_tk = f->unwrapped; /* ks_write may run this again */
    if (rc != KS_OK)
        return rc;
    if (!f->ok)
        return tok_token_put(txn, f->tid, &rec); /* the same write as a right PIN's; the try stays spent */
    h = tok_attrs_find(&rec, pin_field(f->role));
    if (!h || h->len != f->r->rec_len || memcmp(h->val, f->r->rec, h->len) != 0)
        return KS_ECHANGED;
    if (f->act == ACT_INITTOKEN)
        return reinit_token(txn, f);
    if (tok_attrs_set_ulong(&rec, fails_field(f->role), 0) != 0)
        return KS_ENOMEM;
    if ((rc = bind_token(txn, f->tid, &rec, f->role, f->k, &f->have_tk, f->tk)) != KS_OK)
        return rc;
    if (f->act == ACT_SETPIN && (rc = set_pin_rec(&rec, f->role, f->newk, f->tk, f->tid)) != KS_OK)
        return rc;
    if ((rc = tok_token_put(txn, f->tid, &rec)) != KS_OK)
        return rc;
    return ks_token_incarnation(txn, f->tid, &f->inc);
}

/* A read-only keystore counts nothing and changes nothing: the token key
 * comes from the role's record or the escrow; a token made before PIN
 * binding has none (its private objects are outside envelopes). */
static int finish_readonly(ks_txn *txn, finish *f)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    int rc = rec_get(txn, f->tid, &rec);

    f->have_tk = f->unwrapped;
    if (rc != KS_OK)
        return rc;
    if (tok_attrs_find(&rec, TOKR_TK_KCV)) {
        if ((rc = bind_token(txn, f->tid, &rec, f->role, NULL, &f->have_tk, f->tk)) != KS_OK)
            return rc;
    } else if (f->have_tk) {
        return KS_ECORRUPT;
    }
    return ks_token_incarnation(txn, f->tid, &f->inc);
}

static CK_RV ks_rv(int rc)
{
    return rc == KS_ENOTFOUND ? CKR_SLOT_ID_INVALID : rc == KS_ECHANGED ? CKR_FUNCTION_FAILED : ks_to_ckr(rc);
}

/* Reserve, check, finish: one counted attempt of role's PIN. On CKR_OK,
 * f->have_tk tells whether f->tk holds the token key. Caller holds the
 * attempt lock. */
static CK_RV attempt(tok_ctx *ctx, const uint8_t *pin, CK_ULONG len, finish *f)
{
    reserve r = {.tid = f->tid, .role = f->role, .count = !ks_readonly(ctx->st)};
    tok_pin_key k;
    ks_txn *txn = NULL;
    int rc, v;

    rc = r.count ? ks_write(ctx->st, reserve_fn, &r) : KS_EROFS;
    if (rc == KS_EROFS) {
        /* Whoever can only read the keystore could attack the PIN records
         * offline anyway: attempts are not counted. */
        r.count = false;
        rc = ks_read_begin(ctx->st, &txn);
        if (rc == KS_OK) {
            rc = reserve_fn(txn, &r);
            ks_read_end(txn);
        }
    }
    if (r.verdict != CKR_OK)
        return r.verdict;
    if (rc == KS_EEXIST && !r.count)
        rc = KS_OK; /* read-only: the record was read, nothing written */
    if (rc != KS_OK)
        return ks_rv(rc);
    v = tok_pin_check(pin, len, r.rec, r.rec_len, &k);
    if (v == TOK_PIN_BAD) {
        ks_log(KS_LOG_ERROR, "token %u: the %s PIN record is malformed; restore the keystore from a backup", f->tid,
               role_name(f->role));
        return CKR_DEVICE_ERROR;
    }
    f->r = &r;
    f->ok = v == TOK_PIN_OK;
    f->k = &k;
    f->unwrapped = f->have_tk = false;
    if (f->ok) {
        int u = tok_pin_unwrap(&k, r.rec, r.rec_len, f->tid, f->role, f->tk);
        if (u < 0) {
            tok_pin_key_clear(&k);
            ks_log(KS_LOG_ERROR, "token %u: the token key in the %s PIN record fails authentication: the record "
                   "was altered; restore the keystore from a backup", f->tid, role_name(f->role));
            return CKR_DEVICE_ERROR;
        }
        f->unwrapped = f->have_tk = u == 0;
    }
    if (r.count) {
        rc = ks_write(ctx->st, finish_fn, f);
    } else if (f->ok) {
        rc = ks_read_begin(ctx->st, &txn);
        if (rc == KS_OK) {
            rc = finish_readonly(txn, f);
            ks_read_end(txn);
        }
    }
    tok_pin_key_clear(&k);
    f->k = NULL;
    f->r = NULL;
    if (rc != KS_OK) {
        OPENSSL_cleanse(f->tk, sizeof(f->tk));
        f->have_tk = false;
        if (rc == KS_ECHANGED)
            ks_log(KS_LOG_ERROR, "token %u: the %s PIN record changed during a PIN check", f->tid,
                   role_name(f->role));
        return ks_rv(rc);
    }
    if (!f->ok) {
        if (!r.count)
            ks_log(KS_LOG_INFO, "token %u: wrong %s PIN (not counted: read-only keystore)", f->tid,
                   role_name(f->role));
        else if (r.fails >= TOK_MAX_PIN_TRIES)
            ks_log(KS_LOG_WARN, "token %u: %s PIN locked after %lu failed attempts", f->tid, role_name(f->role),
                   TOK_MAX_PIN_TRIES);
        else
            ks_log(KS_LOG_INFO, "token %u: wrong %s PIN (%lu of %lu attempts before it locks)", f->tid,
                   role_name(f->role), (unsigned long)r.fails, TOK_MAX_PIN_TRIES);
        return CKR_PIN_INCORRECT;
    }
    ks_log(KS_LOG_DEBUG, "token %u: %s PIN accepted", f->tid, role_name(f->role));
    return CKR_OK;
}

static CK_RV lock_attempts(tok_ctx *ctx, CK_SLOT_ID slot, ks_attempt *fd)
{
    int rc;

    if (slot == 0 || slot > UINT32_MAX)
        return CKR_SLOT_ID_INVALID;
    rc = ks_attempt_lock(ctx->st, (uint32_t)slot, ATTEMPT_WAIT_MS, fd);
    if (rc == KS_OK || rc == KS_EROFS)
        return CKR_OK;
    ks_log(KS_LOG_ERROR, "token %lu: %s", (unsigned long)slot,
           rc == KS_EBUSY ? "another PIN attempt on this token has not finished for 60 s (is a process holding "
                            "it stopped?); try again"
                          : "cannot lock PIN attempts (on the keystore file, or the database's lock)");
    return rc == KS_EBUSY ? CKR_FUNCTION_FAILED : CKR_DEVICE_ERROR;
}

CK_RV tok_login_check(tok_ctx *ctx, CK_SLOT_ID slot, CK_USER_TYPE who, const uint8_t *pin, CK_ULONG len)
{
    finish f = {.ctx = ctx, .tid = (uint32_t)slot, .role = role_of(who), .act = ACT_LOGIN};
    ks_attempt fd = KS_ATTEMPT_INIT;
    CK_RV rv = pin_args(pin, len);

    if (rv == CKR_OK)
        rv = lock_attempts(ctx, slot, &fd);
    if (rv != CKR_OK)
        return rv;
    rv = attempt(ctx, pin, len, &f);
    ks_attempt_unlock(&fd);
    if (rv == CKR_OK && f.have_tk)
        tok_tk_install(ctx, slot, f.inc, f.tk);
    OPENSSL_cleanse(f.tk, sizeof(f.tk));
    return rv;
}

typedef struct {
    uint32_t tid;
    const tok_attrs *rec;
} token_create;

static int create_fn(ks_txn *txn, void *arg)
{
    const token_create *c = arg;
    uint32_t next = 0;
    int rc = ks_token_exists(txn, c->tid);

    /* Still the free slot? Another process may have initialized it since we looked. */
    if (rc == KS_OK)
        return KS_ECHANGED;
    if (rc != KS_ENOTFOUND || (rc = ks_token_new_id(txn, &next)) != KS_OK)
        return rc;
    if (next != c->tid)
        return KS_ECHANGED;
    return tok_token_put(txn, c->tid, c->rec);
}

CK_RV tok_token_init(tok_ctx *ctx, CK_SLOT_ID slot, const uint8_t *so_pin, CK_ULONG len, const uint8_t label[32])
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = pin_args(so_pin, len);
    ks_attempt fd = KS_ATTEMPT_INIT;
    int rc;

    if (rv != CKR_OK)
        return rv;
    rv = tok_token_load(ctx, slot, &rec);
    if (rv == CKR_OK) {
        /* Re-initialization: the SO PIN is checked as a counted attempt and
         * the wipe is that attempt's second write. */
        finish f = {.ctx = ctx, .tid = (uint32_t)slot, .role = ROLE_SO, .act = ACT_INITTOKEN, .label = label};

        if (ks_readonly(ctx->st))
            return CKR_TOKEN_WRITE_PROTECTED;
        if ((rv = lock_attempts(ctx, slot, &fd)) != CKR_OK)
            return rv;
        tok_cache_flush(ctx);
        rv = attempt(ctx, so_pin, len, &f);
        ks_attempt_unlock(&fd);
        OPENSSL_cleanse(f.tk, sizeof(f.tk));
        tok_logout(ctx, slot);
        if (rv == CKR_OK)
            ks_log(KS_LOG_INFO, "token %lu re-initialized", (unsigned long)slot);
        return rv;
    }
    if (rv != CKR_SLOT_ID_INVALID || (rv = tok_is_free_slot(ctx, slot)) != CKR_OK)
        return rv;
    /* A new token on the free slot: its key exists only wrapped under the SO PIN. */
    tok_pin_key k;
    uint8_t tk[TOK_TK_LEN];
    if (tok_pin_new(so_pin, len, &k) != 0 || RAND_bytes_ex(ks_libctx(), tk, sizeof(tk), 0) != 1) {
        tok_pin_key_clear(&k);
        return CKR_GENERAL_ERROR;
    }
    rc = set_pin_rec(&rec, ROLE_SO, &k, tk, (uint32_t)slot);
    if (rc == KS_OK)
        rc = set_kcv(&rec, tk);
    tok_pin_key_clear(&k);
    OPENSSL_cleanse(tk, sizeof(tk));
    if (rc == KS_OK && (tok_attrs_set_ulong(&rec, TOKR_SO_FAILS, 0) != 0 || tok_attrs_set(&rec, TOKR_LABEL, label, 32) != 0))
        rc = KS_ENOMEM;
    if (rc == KS_OK)
        rc = ks_write(ctx->st, create_fn, &(token_create){(uint32_t)slot, &rec});
    if (rc == KS_ECHANGED) {
        ks_log(KS_LOG_WARN, "slot %lu: another process initialized a token there first; nothing written",
               (unsigned long)slot);
        return CKR_FUNCTION_FAILED;
    }
    if (rc != KS_OK)
        return ks_to_ckr(rc);
    ks_log(KS_LOG_INFO, "token %lu initialized", (unsigned long)slot);
    return CKR_OK;
}

typedef struct {
    tok_ctx *ctx;
    uint32_t tid;
    const tok_pin_key *k;
    CK_RV verdict;
} init_pin;

static int init_pin_fn(ks_txn *txn, void *arg)
{
    init_pin *p = arg;
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    uint8_t tk[TOK_TK_LEN];
    bool have = false;
    uint64_t inc = 0;
    int rc = rec_get(txn, p->tid, &rec);

    p->verdict = CKR_OK;
    if (rc == KS_OK)
        rc = ks_token_incarnation(txn, p->tid, &inc);
    if (rc != KS_OK)
        return rc;
    /* The SO's login unwrapped the token key; a token made before PIN
     * binding gets one now (escrowed for the SO until the SO logs in). */
    if (tok_attrs_find(&rec, TOKR_TK_KCV)) {
        have = tok_tk_get(p->ctx, p->tid, inc, tk);
        if (!have) {
            p->verdict = CKR_USER_NOT_LOGGED_IN;
            ks_log(KS_LOG_ERROR, "token %u: this process does not hold the token key (the SO logged in while the "
                   "keystore was read-only?): log out, log in as SO again, then set the user PIN", p->tid);
            return KS_EPERM;
        }
    }
    rc = bind_token(txn, p->tid, &rec, ROLE_USER, NULL, &have, tk);
    if (rc == KS_OK)
        rc = set_pin_rec(&rec, ROLE_USER, p->k, tk, p->tid);
    OPENSSL_cleanse(tk, sizeof(tk));
    if (rc == KS_OK)
        rc = tok_attrs_set_ulong(&rec, TOKR_USER_FAILS, 0) == 0 ? KS_OK : KS_ENOMEM;
    if (rc != KS_OK)
        return rc;
    escrow_tidy(&rec);
    return tok_token_put(txn, p->tid, &rec);
}

CK_RV tok_pin_init(tok_ctx *ctx, CK_SLOT_ID slot, const uint8_t *pin, CK_ULONG len)
{
    init_pin p = {.ctx = ctx, .tid = (uint32_t)slot};
    tok_pin_key k;
    ks_attempt fd = KS_ATTEMPT_INIT;
    int rc;
    CK_RV rv = pin_args(pin, len);

    if (rv != CKR_OK)
        return rv;
    if (ks_readonly(ctx->st))
        return CKR_TOKEN_WRITE_PROTECTED;
    if (tok_pin_new(pin, len, &k) != 0)
        return CKR_GENERAL_ERROR;
    p.k = &k;
    rv = lock_attempts(ctx, slot, &fd);
    if (rv == CKR_OK) {
        rc = ks_write(ctx->st, init_pin_fn, &p);
        ks_attempt_unlock(&fd);
        rv = p.verdict != CKR_OK ? p.verdict : ks_rv(rc);
    }
    tok_pin_key_clear(&k);
    if (rv == CKR_OK)
        ks_log(KS_LOG_INFO, "token %lu: user PIN set by the SO", (unsigned long)slot);
    return rv;
}

CK_RV tok_pin_set(tok_ctx *ctx, CK_SLOT_ID slot, CK_USER_TYPE who, const uint8_t *old, CK_ULONG oldlen,
                  const uint8_t *pin, CK_ULONG len)
{
    finish f = {.ctx = ctx, .tid = (uint32_t)slot, .role = role_of(who), .act = ACT_SETPIN};
    tok_pin_key newk;
    ks_attempt fd = KS_ATTEMPT_INIT;
    CK_RV rv = pin_args(old, oldlen);

    if (rv == CKR_OK)
        rv = pin_args(pin, len);
    if (rv != CKR_OK)
        return rv;
    if (ks_readonly(ctx->st))
        return CKR_TOKEN_WRITE_PROTECTED;
    if (tok_pin_new(pin, len, &newk) != 0)
        return CKR_GENERAL_ERROR;
    f.newk = &newk;
    rv = lock_attempts(ctx, slot, &fd);
    if (rv == CKR_OK) {
        rv = attempt(ctx, old, oldlen, &f);
        ks_attempt_unlock(&fd);
    }
    tok_pin_key_clear(&newk);
    OPENSSL_cleanse(f.tk, sizeof(f.tk));
    if (rv == CKR_OK)
        ks_log(KS_LOG_INFO, "token %lu: %s PIN changed", (unsigned long)slot, role_name(f.role));
    return rv;
}
