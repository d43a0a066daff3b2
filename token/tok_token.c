/* p11mk token layer: tokens, token objects, key cache (PINs: tok_login.c). */
#include "tok_internal.h"
#include "token/tok_access.h"
#include "tok_envelope.h"
#include "tok_pin.h"
#include "token/tok_policy.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- context --------------------------------------------------------- */

static __thread tok_open_error open_error;

const tok_open_error *tok_ctx_error(void) { return &open_error; }

/* Record why the open failed (what was being done, then the keystore's
 * sentence) with its code and area, and log it. */
static void open_failed(const char *doing, int rc, const ks_err *err)
{
    open_error.rc = rc;
    open_error.err.area = err->area;
    snprintf(open_error.err.msg, sizeof(open_error.err.msg), "%s: %.900s", doing,
             err->msg[0] ? err->msg : ks_strerror(rc));
    ks_log(KS_LOG_ERROR, "%s", open_error.err.msg);
}
const ks_config *tok_ctx_config(tok_ctx *ctx) { return &ctx->cfg; }
const ks_mkey *tok_ctx_mkey(tok_ctx *ctx) { return &ctx->mk; }

void tok_process_setup(void) { ks_process_setup(); }

CK_RV tok_ctx_open(unsigned flags, tok_ctx **out)
{
    const char *deflog = (flags & TOK_CTX_STDERR) ? "stderr" : NULL;
    tok_ctx *ctx = calloc(1, sizeof(*ctx));
    ks_err err = KS_ERR_INIT;
    ks_info info;
    int rc;

    memset(&open_error, 0, sizeof(open_error));
    if (!ctx)
        return CKR_HOST_MEMORY;
    pthread_mutex_init(&ctx->cache_lock, NULL);
    pthread_mutex_init(&ctx->tk_lock, NULL);
    pthread_mutex_init(&ctx->sobj_lock, NULL);
    rc = ks_config_load(&ctx->cfg, &err);
    if (rc != KS_OK) {
        ks_log_setup(deflog, KS_LOG_ERROR, "p11mk");
        open_failed("configuration error", rc, &err);
        goto fail;
    }
    /* The admin talks to a person: its messages go to stderr whatever the
     * module's log destination is. */
    ks_log_setup((flags & TOK_CTX_STDERR) ? "stderr" : ctx->cfg.log ? ctx->cfg.log : deflog, ctx->cfg.log_level,
                 "p11mk");
    tok_mech_set_rsa_min_bits(ctx->cfg.rsa_min_bits);
    tok_policy_set_wrap_strict(ctx->cfg.wrap_strict);
    (void)ks_secure_heap_init(&ctx->cfg); /* before the first key is built */
    if (!tok_mech_set_legacy(ctx->cfg.legacy_mechanisms) && ctx->cfg.legacy_mechanisms)
        ks_log(KS_LOG_WARN, "legacy_mechanisms = yes, but OpenSSL's legacy provider cannot be loaded (is it "
               "installed? OPENSSL_MODULES=%s): single DES and MD5 are not offered",
               getenv("OPENSSL_MODULES") ? getenv("OPENSSL_MODULES") : "unset");
    rc = ks_mkey_load(&ctx->cfg, &ctx->mk, &err);
    if (rc != KS_OK) {
        open_failed("cannot load the master key", rc, &err);
        goto fail;
    }
    if (ctx->mk.is_default && !(flags & TOK_CTX_STDERR))
        ks_log(KS_LOG_WARN, "keystore %s uses the built-in default master key, which is the same on "
               "every install: set master_key to a key file (p11mk-admin init --generate-key FILE)",
               ctx->cfg.keystore);
    rc = ks_open_cfg(&ctx->cfg, &ctx->mk,
                     ((flags & TOK_CTX_CREATE) ? KS_OPEN_CREATE : 0) | ((flags & TOK_CTX_NO_THREADS) ? KS_OPEN_NO_THREADS : 0),
                     &ctx->st, &err);
    if (rc != KS_OK) {
        open_failed("cannot open keystore", rc, &err);
        goto fail;
    }
    /* The keystore's id names its tokens (serial numbers): an open that
     * cannot read it fails, rather than serve tokens under a zero id. */
    if ((rc = ks_get_info(ctx->st, &info)) != KS_OK) {
        open_failed("cannot read the opened keystore", rc, &err);
        goto fail;
    }
    memcpy(ctx->ksid, info.keystore_id, sizeof(ctx->ksid));
    if (!(ctx->opstate_key = ks_secmem_alloc(TOK_OPSTATE_KEY_LEN)) ||
        tok_random(ctx->opstate_key, TOK_OPSTATE_KEY_LEN) != CKR_OK) {
        tok_ctx_close(ctx);
        return CKR_HOST_MEMORY;
    }
    /* The keystore holds the keys it needs (in memory kept out of core
     * dumps); this copy keeps only where the key came from. */
    OPENSSL_cleanse(ctx->mk.key, sizeof(ctx->mk.key));
    ks_log(KS_LOG_DEBUG, "keystore %s opened (master key: %s)", ctx->cfg.keystore, ctx->mk.source);
    *out = ctx;
    return CKR_OK;
fail:
    tok_ctx_close(ctx);
    return CKR_GENERAL_ERROR;
}

void tok_ctx_close(tok_ctx *ctx)
{
    if (!ctx)
        return;
    tok_cache_flush(ctx);
    tok_tk_drop_all(ctx);
    tok_sobjs_free_all(ctx);
    if (ctx->st)
        ks_close(ctx->st);
    ks_mkey_clear(&ctx->mk);
    ks_config_free(&ctx->cfg);
    ks_secmem_free(ctx->opstate_key);
    pthread_mutex_destroy(&ctx->cache_lock);
    pthread_mutex_destroy(&ctx->tk_lock);
    pthread_mutex_destroy(&ctx->sobj_lock);
    free(ctx);
}

ks_store *tok_ctx_store(tok_ctx *ctx) { return ctx->st; }

bool tok_ctx_readonly(tok_ctx *ctx) { return ks_readonly(ctx->st); }

/* ---- token records --------------------------------------------------- */

CK_RV tok_token_load(tok_ctx *ctx, CK_SLOT_ID slot, tok_attrs *rec)
{
    AUTO_TXN txn = NULL;
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc;

    if (slot == 0 || slot > UINT32_MAX)
        return CKR_SLOT_ID_INVALID;
    rc = ks_read_begin(ctx->st, &txn);
    if (rc != KS_OK)
        return ks_to_ckr(rc);
    rc = ks_token_get(txn, (uint32_t)slot, &blob, &len);
    if (rc == KS_ENOTFOUND)
        return CKR_SLOT_ID_INVALID;
    if (rc != KS_OK && !ks_read_failed(rc)) {
        ks_log(KS_LOG_ERROR, "token %lu: record cannot be used (%s); check the keystore with 'p11mk-admin verify'",
               (unsigned long)slot, ks_strerror(rc));
        return CKR_DEVICE_ERROR;
    }
    if (rc != KS_OK) {
        /* Not damage: the storage did not answer (a disk error, a lost
         * database connection); nothing is wrong with the record. */
        ks_log(KS_LOG_ERROR, "token %lu: cannot read its record (%s); %s", (unsigned long)slot, ks_strerror(rc),
               ks_read_advice(rc));
        return ks_to_ckr(rc);
    }
    rc = tok_attrs_parse(blob, len, rec);
    ks_buf_free(blob, len);
    if (rc == TOK_ATTRS_NOMEM)
        return CKR_HOST_MEMORY;
    if (rc != 0) {
        ks_log(KS_LOG_ERROR, "token %lu: record is malformed", (unsigned long)slot);
        return CKR_DEVICE_ERROR;
    }
    return CKR_OK;
}

int tok_token_put(ks_txn *txn, uint32_t id, const tok_attrs *rec)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc;

    if (tok_attrs_serialize(rec, &blob, &len) != 0)
        return KS_ENOMEM;
    rc = ks_token_put(txn, id, blob, len);
    ks_buf_free(blob, len);
    return rc;
}

/* The tokens' ids and the id the next new token gets (the free slot). */
static CK_RV token_ids(tok_ctx *ctx, uint32_t **ids, size_t *n, uint32_t *next)
{
    AUTO_TXN txn = NULL;
    int rc = ks_read_begin(ctx->st, &txn);

    if (rc == KS_OK)
        rc = ks_token_list(txn, ids, n);
    if (rc == KS_OK && (rc = ks_token_new_id(txn, next)) != KS_OK) {
        free(*ids);
        *ids = NULL;
    }
    return ks_to_ckr(rc);
}

CK_RV tok_slot_list(tok_ctx *ctx, CK_SLOT_ID **ids, CK_ULONG *n)
{
    uint32_t *tids = NULL, next = 0;
    size_t nt = 0;
    CK_RV rv = token_ids(ctx, &tids, &nt, &next);
    CK_SLOT_ID *out;

    if (rv != CKR_OK)
        return rv;
    out = calloc(nt + 1, sizeof(*out));
    if (!out) {
        free(tids);
        return CKR_HOST_MEMORY;
    }
    for (size_t i = 0; i < nt; i++)
        out[i] = tids[i];
    out[nt] = next; /* the free slot */
    free(tids);
    *ids = out;
    *n = nt + 1;
    return CKR_OK;
}

/* Whether a token's record failed to load because the storage did not
 * answer (not because it is damaged): read again to tell. */
static bool token_unreadable(ks_txn *txn, uint32_t tid)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = txn ? ks_token_get(txn, tid, &blob, &len) : KS_EIO;
    ks_buf_free(blob, len);
    return rc != KS_OK && ks_read_failed(rc);
}

CK_RV tok_token_rows(tok_ctx *ctx, tok_token_row **rows, size_t *n)
{
    uint32_t *tids = NULL, next = 0;
    size_t nt = 0, k = 0;
    tok_token_row *out;
    AUTO_TXN txn = NULL;
    CK_RV rv = token_ids(ctx, &tids, &nt, &next);
    int rc;

    *rows = NULL;
    *n = 0;
    if (rv != CKR_OK)
        return rv;
    if (!(out = calloc(nt ? nt : 1, sizeof(*out)))) {
        free(tids);
        return CKR_HOST_MEMORY;
    }
    rc = ks_read_begin(ctx->st, &txn);
    for (size_t i = 0; rc == KS_OK && i < nt; i++) {
        if ((rv = tok_token_info(ctx, tids[i], &out[k].info)) == CKR_SLOT_ID_INVALID)
            continue; /* deleted since the list was read */
        if (rv != CKR_OK && !token_unreadable(txn, tids[i]))
            continue; /* damaged (said by tok_token_load): the others are still listed */
        if (rv != CKR_OK) {
            free(tids);
            free(out);
            return rv; /* the storage did not answer: no list rather than a short one */
        }
        out[k].slot = tids[i];
        if ((rc = ks_token_count_objects(txn, tids[i], &out[k].objects)) != KS_OK)
            break; /* a count not read is not 0 objects */
        k++;
    }
    free(tids);
    if (rc != KS_OK) {
        free(out);
        return ks_to_ckr(rc);
    }
    *rows = out;
    *n = k;
    return CKR_OK;
}

CK_RV tok_is_free_slot(tok_ctx *ctx, CK_SLOT_ID slot)
{
    CK_SLOT_ID *ids = NULL;
    CK_ULONG n = 0;
    CK_RV rv = tok_slot_list(ctx, &ids, &n); /* its last slot is the free one */

    if (rv == CKR_OK)
        rv = n > 0 && ids[n - 1] == slot ? CKR_OK : CKR_SLOT_ID_INVALID;
    free(ids);
    return rv; /* a list not read is not "another slot" */
}

CK_RV tok_slot_check(tok_ctx *ctx, CK_SLOT_ID slot)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = tok_token_load(ctx, slot, &rec);

    if (rv == CKR_SLOT_ID_INVALID) {
        CK_RV free_rv = tok_is_free_slot(ctx, slot);
        return free_rv == CKR_OK ? CKR_TOKEN_NOT_RECOGNIZED : free_rv;
    }
    return rv;
}

static void pad_copy(CK_UTF8CHAR *dst, size_t dlen, const char *src)
{
    size_t n = strlen(src);

    memset(dst, ' ', dlen);
    memcpy(dst, src, n < dlen ? n : dlen);
}

CK_RV tok_slot_info(tok_ctx *ctx, CK_SLOT_ID slot, CK_SLOT_INFO *info)
{
    CK_RV rv = tok_slot_check(ctx, slot);
    char desc[64];

    if (rv != CKR_OK && rv != CKR_TOKEN_NOT_RECOGNIZED)
        return rv;
    memset(info, 0, sizeof(*info));
    snprintf(desc, sizeof(desc), "p11mk slot %lu", (unsigned long)slot);
    pad_copy(info->slotDescription, sizeof(info->slotDescription), desc);
    pad_copy(info->manufacturerID, sizeof(info->manufacturerID), "p11mk project");
    info->flags = CKF_TOKEN_PRESENT;
    info->hardwareVersion.major = 0;
    info->firmwareVersion.major = 0;
    info->firmwareVersion.minor = 1;
    return CKR_OK;
}

static CK_FLAGS pin_flags(CK_ULONG fails, bool so)
{
    CK_FLAGS f = 0;

    if (fails == 0)
        return 0;
    if (fails >= TOK_MAX_PIN_TRIES)
        return so ? CKF_SO_PIN_LOCKED : CKF_USER_PIN_LOCKED;
    f = so ? CKF_SO_PIN_COUNT_LOW : CKF_USER_PIN_COUNT_LOW;
    if (fails == TOK_MAX_PIN_TRIES - 1)
        f |= so ? CKF_SO_PIN_FINAL_TRY : CKF_USER_PIN_FINAL_TRY;
    return f;
}

CK_RV tok_token_info(tok_ctx *ctx, CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = tok_token_load(ctx, slot, &rec);
    const tok_attr *label;
    CK_ULONG so_fails = 0, user_fails = 0;
    char serial[17];

    if (rv == CKR_SLOT_ID_INVALID)
        rv = tok_is_free_slot(ctx, slot); /* the free slot: a present, uninitialized token */
    if (rv != CKR_OK)
        return rv;
    memset(info, 0, sizeof(*info));
    label = tok_attrs_find(&rec, TOKR_LABEL);
    memset(info->label, ' ', sizeof(info->label));
    if (label && label->len == sizeof(info->label))
        memcpy(info->label, label->val, sizeof(info->label));
    pad_copy(info->manufacturerID, sizeof(info->manufacturerID), "p11mk project");
    pad_copy(info->model, sizeof(info->model), "p11mk soft token");
    snprintf(serial, sizeof(serial), "%02x%02x%02x%02x%08lx", ctx->ksid[0], ctx->ksid[1], ctx->ksid[2],
             ctx->ksid[3], (unsigned long)(slot & 0xffffffffUL));
    memcpy(info->serialNumber, serial, sizeof(info->serialNumber));
    info->flags =
        CKF_RNG | CKF_LOGIN_REQUIRED | CKF_DUAL_CRYPTO_OPERATIONS | (ks_readonly(ctx->st) ? CKF_WRITE_PROTECTED : 0);
    if (rec.n) {
        info->flags |= CKF_TOKEN_INITIALIZED | CKF_RESTORE_KEY_NOT_NEEDED;
        if (tok_attrs_find(&rec, TOKR_USER_PIN))
            info->flags |= CKF_USER_PIN_INITIALIZED;
        tok_attrs_get_ulong(&rec, TOKR_SO_FAILS, &so_fails);
        tok_attrs_get_ulong(&rec, TOKR_USER_FAILS, &user_fails);
        info->flags |= pin_flags(so_fails, true) | pin_flags(user_fails, false);
    }
    info->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
    info->ulSessionCount = CK_UNAVAILABLE_INFORMATION;
    info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
    info->ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
    info->ulMaxPinLen = TOK_PIN_MAX_LEN;
    info->ulMinPinLen = TOK_PIN_MIN_LEN;
    info->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
    info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
    info->hardwareVersion.major = 0;
    info->firmwareVersion.major = 0;
    info->firmwareVersion.minor = 1;
    return CKR_OK;
}

CK_RV tok_token_incarnation_at(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t *inc, uint64_t *seq)
{
    AUTO_TXN txn = NULL;
    int rc;

    if (slot == 0 || slot > UINT32_MAX)
        return CKR_SLOT_ID_INVALID;
    rc = ks_read_begin(ctx->st, &txn);
    if (rc == KS_OK) {
        if (seq)
            *seq = ks_txn_seq(txn);
        rc = ks_token_incarnation(txn, (uint32_t)slot, inc);
    }
    return ks_to_ckr(rc);
}

CK_RV tok_token_incarnation(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t *inc)
{
    return tok_token_incarnation_at(ctx, slot, inc, NULL);
}

typedef struct {
    uint32_t id;
    const uint64_t *expect_inc; /* the incarnation the caller saw, or NULL */
} token_del;

static int token_del_fn(ks_txn *txn, void *arg)
{
    const token_del *d = arg;
    uint64_t inc = 0;
    int rc;
    if (d->expect_inc) {
        /* Still the token the caller was shown (not re-initialized since)? */
        if ((rc = ks_token_incarnation(txn, d->id, &inc)) != KS_OK)
            return rc;
        if (inc != *d->expect_inc)
            return KS_ECHANGED;
        if ((rc = ks_token_exists(txn, d->id)) != KS_OK)
            return rc == KS_ENOTFOUND ? KS_ECHANGED : rc; /* not read: not "changed" either */
    }
    return ks_token_del(txn, d->id);
}

CK_RV tok_token_delete(tok_ctx *ctx, CK_SLOT_ID slot, const uint64_t *expect_inc, bool *changed)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = tok_token_load(ctx, slot, &rec);
    token_del d = {(uint32_t)slot, expect_inc};
    int rc;

    if (changed)
        *changed = false;
    if (rv != CKR_OK)
        return rv;
    tok_cache_flush(ctx);
    rc = ks_write(ctx->st, token_del_fn, &d);
    if (rc == KS_ECHANGED) {
        if (changed)
            *changed = true;
        return CKR_FUNCTION_FAILED;
    }
    if (rc == KS_OK) {
        tok_tk_drop(ctx, slot); /* the cache was flushed above */
        ks_log(KS_LOG_INFO, "token %lu deleted with its objects", (unsigned long)slot);
    }
    return ks_to_ckr(rc);
}

/* ---- token objects ---------------------------------------------------- */

/* Attributes with a keystore index, most selective first. */
static const CK_ATTRIBUTE_TYPE indexed[] = {CKA_ID, CKA_LABEL, CKA_CLASS};

static int index_all(ks_txn *txn, uint32_t tid, uint64_t oid, const tok_attrs *obj, bool add)
{
    for (size_t i = 0; i < sizeof(indexed) / sizeof(indexed[0]); i++) {
        const tok_attr *a = tok_attrs_find(obj, indexed[i]);
        int rc;

        if (!a)
            continue;
        rc = add ? ks_idx_add(txn, tid, (uint32_t)a->type, a->val, a->len, oid)
                 : ks_idx_del(txn, tid, (uint32_t)a->type, a->val, a->len, oid);
        if (rc != KS_OK && !(rc == KS_ENOTFOUND && !add))
            return rc;
    }
    return KS_OK;
}

typedef struct {
    tok_ctx *ctx;
    uint32_t tid;
    uint64_t oid;
    const tok_attrs *old, *obj;
    bool create, destroy;
    bool no_token; /* out: the token is gone (deleted by p11mk-admin delete-token) */
    bool no_tk;    /* out: a private object, and this process holds no token key */
} obj_write;

/* The record of obj as stored: a private object's values go into its
 * envelope under the token key this process got at login. */
static int obj_blob(ks_txn *txn, obj_write *w, uint8_t **blob, size_t *len)
{
    tok_attrs sealed = TOK_ATTRS_INIT;
    uint8_t tk[TOK_TK_LEN];
    uint64_t inc = 0;
    int rc;

    if (!tok_obj_is_private(w->obj))
        return tok_attrs_serialize(w->obj, blob, len) == 0 ? KS_OK : KS_ENOMEM;
    if ((rc = ks_token_incarnation(txn, w->tid, &inc)) != KS_OK)
        return rc;
    if (!tok_tk_get(w->ctx, w->tid, inc, tk)) {
        w->no_tk = true;
        return KS_EPERM;
    }
    rc = tok_env_seal(tk, w->tid, w->oid, w->obj, &sealed) == 0 ? KS_OK : KS_ENOMEM;
    OPENSSL_cleanse(tk, sizeof(tk));
    if (rc == KS_OK)
        rc = tok_attrs_serialize(&sealed, blob, len) == 0 ? KS_OK : KS_ENOMEM;
    tok_attrs_free(&sealed);
    return rc;
}

/* The index entries of the object as it is now, in this transaction: w->old
 * was read before it began, and another process may have changed the object
 * since (a relabel committed between the read and this write left the new
 * label's entry pointing at a destroyed object: a hostile tester, two
 * processes relabelling and destroying the same objects; verify exit 5).
 * Gone meanwhile: KS_ENOTFOUND (CKR_OBJECT_HANDLE_INVALID). A record that
 * cannot be read now falls back to w->old (its entries as read before). */
static int unindex_current(ks_txn *txn, obj_write *w)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    tok_attrs now;
    int rc = ks_obj_get(txn, w->tid, w->oid, &blob, &len);
    if (rc == KS_ENOTFOUND)
        return rc;
    if (rc != KS_OK)
        return ks_read_failed(rc) ? rc : index_all(txn, w->tid, w->oid, w->old, false);
    memset(&now, 0, sizeof(now));
    int prc = tok_attrs_parse(blob, len, &now);
    ks_buf_free(blob, len);
    if (prc == TOK_ATTRS_NOMEM)
        return KS_ENOMEM;
    if (prc != 0)
        return index_all(txn, w->tid, w->oid, w->old, false);
    rc = index_all(txn, w->tid, w->oid, &now, false);
    tok_attrs_free(&now);
    return rc;
}

static int obj_write_fn(ks_txn *txn, void *arg)
{
    obj_write *w = arg;
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc;

    if (w->create) {
        if ((rc = ks_token_exists(txn, w->tid)) != KS_OK) {
            w->no_token = rc == KS_ENOTFOUND;
            return rc;
        }
        rc = ks_obj_new_id(txn, &w->oid);
        if (rc != KS_OK)
            return rc;
    }
    if (w->old && (rc = unindex_current(txn, w)) != KS_OK)
        return rc;
    if (w->destroy)
        return ks_obj_del(txn, w->tid, w->oid);
    if ((rc = obj_blob(txn, w, &blob, &len)) != KS_OK)
        return rc;
    rc = w->create ? ks_obj_create(txn, w->tid, w->oid, blob, len) : ks_obj_put(txn, w->tid, w->oid, blob, len);
    ks_buf_free(blob, len);
    if (rc != KS_OK)
        return rc;
    return index_all(txn, w->tid, w->oid, w->obj, true);
}

static CK_RV obj_commit(tok_ctx *ctx, obj_write *w)
{
    int rc;

    w->ctx = ctx;
    rc = ks_write(ctx->st, obj_write_fn, w);
    if (rc == KS_ENOTFOUND)
        return w->no_token ? CKR_TOKEN_NOT_PRESENT : CKR_OBJECT_HANDLE_INVALID;
    if (rc == KS_EPERM && w->no_tk)
        return CKR_USER_NOT_LOGGED_IN; /* the token key comes with the user's login */
    if (rc != KS_OK)
        ks_log(KS_LOG_ERROR, "token %u object %llu: write failed: %s", w->tid, (unsigned long long)w->oid,
               ks_strerror(rc));
    else
        ks_log(KS_LOG_DEBUG, "token %u object %llu %s", w->tid, (unsigned long long)w->oid,
               w->create ? "created" : w->destroy ? "destroyed" : "updated");
    return ks_to_ckr(rc);
}

CK_RV tok_obj_store(tok_ctx *ctx, const tok_access *ac, const tok_attrs *obj, uint64_t *oid)
{
    obj_write w = {.tid = (uint32_t)ac->slot, .obj = obj, .create = true};
    CK_RV rv;

    if (!tok_obj_is_token(obj))
        return tok_sobj_add(ctx, ac, obj, oid);
    rv = tok_access_write(ac, obj);

    if (rv != CKR_OK)
        return rv;
    rv = obj_commit(ctx, &w);

    if (rv == CKR_OK)
        *oid = w.oid;
    return rv;
}

static void cache_drop(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t oid);

CK_RV tok_obj_replace(tok_ctx *ctx, const tok_access *ac, uint64_t oid, const tok_attrs *old, const tok_attrs *updated)
{
    CK_RV rv = tok_access_write(ac, old);

    if (rv == CKR_OK)
        rv = tok_access_write(ac, updated);
    if (rv != CKR_OK)
        return rv;
    if (oid & TOK_SOBJ_BIT)
        return tok_sobj_replace(ctx, ac, oid, updated);
    cache_drop(ctx, ac->slot, oid);
    return obj_commit(ctx, &(obj_write){.tid = (uint32_t)ac->slot, .oid = oid, .old = old, .obj = updated});
}

CK_RV tok_obj_set(tok_ctx *ctx, const tok_access *ac, uint64_t h, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    AUTO_ATTRS obj = TOK_ATTRS_INIT;
    AUTO_ATTRS updated = TOK_ATTRS_INIT;
    CK_RV rv = tok_obj_read(ctx, ac, h, &obj);

    if (rv == CKR_OK)
        rv = tok_access_write(ac, &obj);
    if (rv == CKR_OK)
        rv = tok_policy_set(&obj, tmpl, n, &updated);
    if (rv == CKR_OK)
        rv = tok_obj_replace(ctx, ac, h, &obj, &updated);
    return rv;
}

CK_RV tok_obj_destroy(tok_ctx *ctx, const tok_access *ac, uint64_t oid)
{
    AUTO_ATTRS old = TOK_ATTRS_INIT;
    CK_RV rv = tok_obj_read(ctx, ac, oid, &old);

    if (rv == CKR_OK)
        rv = tok_access_write(ac, &old);
    if (rv == CKR_OK && !tok_attrs_get_bool(&old, CKA_DESTROYABLE, true))
        rv = CKR_ACTION_PROHIBITED;
    if (rv != CKR_OK)
        return rv;
    if (oid & TOK_SOBJ_BIT)
        return tok_sobj_destroy(ctx, ac, oid);
    cache_drop(ctx, ac->slot, oid);
    return obj_commit(ctx, &(obj_write){.tid = (uint32_t)ac->slot, .oid = oid, .old = &old, .destroy = true});
}

CK_RV tok_obj_unmake(tok_ctx *ctx, const tok_access *ac, uint64_t oid)
{
    AUTO_ATTRS old = TOK_ATTRS_INIT;
    CK_RV rv;

    if (oid & TOK_SOBJ_BIT)
        return tok_sobj_destroy(ctx, ac, oid);
    if ((rv = tok_obj_read(ctx, ac, oid, &old)) != CKR_OK)
        return rv;
    cache_drop(ctx, ac->slot, oid);
    return obj_commit(ctx, &(obj_write){.tid = (uint32_t)ac->slot, .oid = oid, .old = &old, .destroy = true});
}

typedef enum {
    READ_FULL, /* everything, a private object's envelope opened (needs the token key) */
    READ_META, /* what can be shown without the PIN: a private object's envelope left out */
} read_mode;

/* A private object's envelope: opened with the token key this process holds;
 * without it the object is not there for this caller. A private object
 * outside an envelope on a token whose key this process holds was put there
 * by someone holding only the master key: damage, not served. */
static CK_RV obj_open(tok_ctx *ctx, ks_txn *txn, CK_SLOT_ID slot, uint64_t oid, tok_attrs *a, read_mode mode,
                      bool *sealed, bool *storage_failed)
{
    bool env = tok_env_present(a);
    uint8_t tk[TOK_TK_LEN];
    uint64_t inc = 0;
    bool have;
    int rc;

    if (sealed)
        *sealed = env;
    if (mode == READ_META)
        return env && tok_env_strip(a, a) != 0 ? CKR_HOST_MEMORY : CKR_OK;
    if (!env && !tok_obj_is_private(a))
        return CKR_OK;
    if (env && !tok_obj_is_private(a)) {
        ks_log(KS_LOG_ERROR, "token %lu object %llu: an envelope on an object that says it is not private (its "
               "CKA_PRIVATE was changed with the master key alone); not used. Delete it or restore a backup",
               (unsigned long)slot, (unsigned long long)oid);
        return CKR_DEVICE_ERROR;
    }
    if ((rc = ks_token_incarnation(txn, (uint32_t)slot, &inc)) != KS_OK) {
        if (ks_read_failed(rc) && storage_failed)
            *storage_failed = true;
        return ks_to_ckr(rc);
    }
    have = tok_tk_get(ctx, slot, inc, tk);
    if (!env) {
        if (!have)
            return CKR_OK; /* a token made before PIN binding, read while it cannot be upgraded */
        OPENSSL_cleanse(tk, sizeof(tk));
        ks_log(KS_LOG_ERROR, "token %lu object %llu: a private object outside its envelope on a PIN-bound token "
               "(written with the master key alone); not used. Delete it or restore a backup",
               (unsigned long)slot, (unsigned long long)oid);
        return CKR_DEVICE_ERROR;
    }
    if (!have)
        return CKR_OBJECT_HANDLE_INVALID; /* private: not there until the user logs in */
    rc = tok_env_open(tk, (uint32_t)slot, oid, a, a);
    OPENSSL_cleanse(tk, sizeof(tk));
    if (rc == -1)
        return CKR_HOST_MEMORY;
    if (rc != 0) {
        ks_log(KS_LOG_ERROR, "token %lu object %llu: its envelope fails authentication under the token key: the "
               "record was altered. Delete the object or restore a backup", (unsigned long)slot,
               (unsigned long long)oid);
        return CKR_DEVICE_ERROR;
    }
    return CKR_OK;
}

/* ac: the caller, whose access to a private object is decided before its
 * envelope is opened (NULL: the token layer's own reads). */
/* storage_failed (may be NULL): set when the storage itself failed (an I/O
 * error, a lost database connection, a refusal), not the record: the answer
 * is then unknown, where a damaged record is known to be unusable. */
static CK_RV obj_read_txn2(tok_ctx *ctx, const tok_access *ac, ks_txn *txn, CK_SLOT_ID slot, uint64_t oid,
                           tok_attrs *out, read_mode mode, bool *sealed, bool *storage_failed)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    CK_RV rv;
    int rc;

    if (slot == 0 || slot > UINT32_MAX || oid == 0)
        return CKR_OBJECT_HANDLE_INVALID;
    rc = ks_obj_get(txn, (uint32_t)slot, oid, &blob, &len);
    if (rc == KS_ENOTFOUND)
        return CKR_OBJECT_HANDLE_INVALID;
    if (ks_read_failed(rc)) {
        if (storage_failed)
            *storage_failed = true;
        return ks_to_ckr(rc) == CKR_GENERAL_ERROR ? CKR_DEVICE_ERROR : ks_to_ckr(rc);
    }
    if (rc != KS_OK) {
        ks_log(KS_LOG_ERROR, "token %lu object %llu cannot be unsealed (%s): the record was altered or "
               "its key is unavailable; other objects are unaffected. Delete the object or restore a backup",
               (unsigned long)slot, (unsigned long long)oid, ks_strerror(rc));
        return CKR_DEVICE_ERROR;
    }
    rc = tok_attrs_parse(blob, len, out);
    ks_buf_free(blob, len);
    if (rc == TOK_ATTRS_NOMEM)
        return CKR_HOST_MEMORY;
    if (rc != 0) {
        ks_log(KS_LOG_ERROR, "token %lu object %llu: malformed attribute record", (unsigned long)slot,
               (unsigned long long)oid);
        return CKR_DEVICE_ERROR;
    }
    rv = ac && !tok_access_sees(ac, out) ? CKR_OBJECT_HANDLE_INVALID : obj_open(ctx, txn, slot, oid, out, mode, sealed, storage_failed);
    if (rv != CKR_OK)
        tok_attrs_free(out);
    return rv;
}

static CK_RV obj_read_txn(tok_ctx *ctx, const tok_access *ac, ks_txn *txn, CK_SLOT_ID slot, uint64_t oid,
                          tok_attrs *out, read_mode mode, bool *sealed)
{
    return obj_read_txn2(ctx, ac, txn, slot, oid, out, mode, sealed, NULL);
}

/* An object read for an application's call whose storage did not answer
 * (its transaction could not begin, KS_EIO, or a read in it failed:
 * storage_failed; a database connection lost mid-read that could not go on
 * over another, say) runs again from a new transaction, KS_READ_TRIES times
 * in all, as the open's reads do: each such read stands alone, so a new
 * snapshot answers it as well. Damage is not run again. */
static bool read_again(bool no_answer, int attempt)
{
    return no_answer && attempt < KS_READ_TRIES;
}

/* One object read in a transaction of its own (obj_read_txn2), run again as
 * read_again says. */
static CK_RV obj_read_alone(tok_ctx *ctx, const tok_access *ac, uint64_t oid, tok_attrs *out, bool *storage_failed)
{
    for (int attempt = 1;; attempt++) {
        AUTO_TXN txn = NULL;
        int rc = ks_read_begin(ctx->st, &txn);
        CK_RV rv;

        *storage_failed = rc != KS_OK;
        rv = rc != KS_OK ? ks_to_ckr(rc)
                         : obj_read_txn2(ctx, ac, txn, ac->slot, oid, out, READ_FULL, NULL, storage_failed);
        if (!read_again(rc == KS_EIO || (rc == KS_OK && *storage_failed), attempt))
            return rv;
    }
}

CK_RV tok_obj_match(tok_ctx *ctx, const tok_access *ac, uint64_t oid, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                    bool *match)
{
    AUTO_ATTRS obj = TOK_ATTRS_INIT;
    bool storage_failed = false;
    CK_RV rv;

    *match = false;
    if (oid & TOK_SOBJ_BIT)
        rv = tok_sobj_read(ctx, ac, oid, &obj);
    else
        rv = obj_read_alone(ctx, ac, oid, &obj, &storage_failed);
    if (rv == CKR_OK) {
        *match = tok_attrs_match(&obj, tmpl, n);
        return CKR_OK;
    }
    /* Deleted meanwhile, not visible to this caller, or damaged (logged):
     * not a match, and the search goes on (one bad record must not hide the
     * rest). A storage failure leaves the answer unknown: the search stops. */
    return rv == CKR_HOST_MEMORY || storage_failed ? rv : CKR_OK;
}

CK_RV tok_obj_read(tok_ctx *ctx, const tok_access *ac, uint64_t oid, tok_attrs *out)
{
    bool storage_failed = false;

    if (oid & TOK_SOBJ_BIT)
        return tok_sobj_read(ctx, ac, oid, out);
    return obj_read_alone(ctx, ac, oid, out, &storage_failed);
}

CK_RV tok_obj_read_meta(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t oid, tok_attrs *out, bool *sealed,
                        uint32_t *epoch)
{
    AUTO_TXN txn = NULL;
    ks_stamp st = {0, {0}};
    int rc = ks_read_begin(ctx->st, &txn);

    if (rc != KS_OK)
        return ks_to_ckr(rc);
    if (epoch) {
        if (slot == 0 || slot > UINT32_MAX || (rc = ks_obj_stamp(txn, (uint32_t)slot, oid, &st)) == KS_ENOTFOUND)
            return CKR_OBJECT_HANDLE_INVALID;
        if (rc != KS_OK)
            return ks_to_ckr(rc);
        *epoch = st.epoch;
    }
    return obj_read_txn(ctx, NULL, txn, slot, oid, out, READ_META, sealed);
}

int tok_oid_push(uint64_t oid, void *arg)
{
    tok_oid_vec *vec = arg;

    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 64;
        uint64_t *v = realloc(vec->v, cap * sizeof(*v));

        if (!v)
            return KS_ENOMEM;
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->n++] = oid;
    return 0;
}

CK_RV tok_obj_candidates(tok_ctx *ctx, CK_SLOT_ID slot, const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t **oids,
                         size_t *count)
{
    AUTO_TXN txn = NULL;
    tok_oid_vec vec = {0};
    const CK_ATTRIBUTE *key = NULL;
    int rc;

    for (size_t i = 0; i < sizeof(indexed) / sizeof(indexed[0]) && !key; i++)
        for (CK_ULONG j = 0; j < n; j++)
            if (tmpl[j].type == indexed[i] && (tmpl[j].pValue || !tmpl[j].ulValueLen)) {
                key = &tmpl[j];
                break;
            }
    for (int attempt = 1;; attempt++) {
        rc = ks_read_begin(ctx->st, &txn);
        if (rc == KS_OK)
            rc = key ? ks_idx_lookup(txn, (uint32_t)slot, (uint32_t)key->type, key->pValue, key->ulValueLen,
                                     tok_oid_push, &vec)
                     : ks_obj_foreach(txn, (uint32_t)slot, tok_oid_push, &vec);
        if (rc == KS_ENOTFOUND)
            rc = KS_OK;
        if (!read_again(rc == KS_EIO, attempt))
            break;
        ks_read_end(txn); /* again, from nothing */
        txn = NULL;
        free(vec.v);
        vec = (tok_oid_vec){0};
    }
    if (rc != KS_OK) {
        free(vec.v);
        return ks_to_ckr(rc);
    }
    *oids = vec.v;
    *count = vec.n;
    return CKR_OK;
}

/* ---- key cache ---------------------------------------------------------
 * Unsealed, parsed keys keyed by (token, object id). An entry is valid
 * while the stored record's stamp (GCM tag + epoch) is unchanged, so a
 * write by any process, a rewrap and an epoch change all miss the cache. */

static unsigned cache_bucket(CK_SLOT_ID slot, uint64_t oid)
{
    uint64_t h = (oid ^ ((uint64_t)slot << 40)) * 0x9E3779B97F4A7C15ull;

    return (unsigned)(h >> 54) % CACHE_BUCKETS;
}

static void cache_ent_free(cache_ent *e)
{
    tok_key_unref(e->key);
    free(e);
}

static void cache_flush_locked(tok_ctx *ctx)
{
    for (unsigned b = 0; b < CACHE_BUCKETS; b++) {
        cache_ent *e = ctx->cache[b];

        while (e) {
            cache_ent *next = e->next;

            cache_ent_free(e);
            e = next;
        }
        ctx->cache[b] = NULL;
    }
    ctx->cache_n = 0;
}

void tok_cache_flush(tok_ctx *ctx)
{
    pthread_mutex_lock(&ctx->cache_lock);
    cache_flush_locked(ctx);
    pthread_mutex_unlock(&ctx->cache_lock);
}

static void cache_drop(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t oid)
{
    unsigned b = cache_bucket(slot, oid);

    pthread_mutex_lock(&ctx->cache_lock);
    for (cache_ent **pp = &ctx->cache[b]; *pp; pp = &(*pp)->next) {
        cache_ent *e = *pp;

        if (e->slot == slot && e->oid == oid) {
            *pp = e->next;
            cache_ent_free(e);
            ctx->cache_n--;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->cache_lock);
}

void tok_cache_drop_private(tok_ctx *ctx, CK_SLOT_ID slot)
{
    pthread_mutex_lock(&ctx->cache_lock);
    for (unsigned b = 0; b < CACHE_BUCKETS; b++)
        for (cache_ent **pp = &ctx->cache[b]; *pp;) {
            cache_ent *e = *pp;

            if (e->slot == slot && tok_key_private(e->key)) {
                *pp = e->next;
                cache_ent_free(e);
                ctx->cache_n--;
            } else {
                pp = &e->next;
            }
        }
    pthread_mutex_unlock(&ctx->cache_lock);
}

/* On a hit, hands out a key reference. With st NULL, a hit needs nothing
 * committed since the entry was last found current (seq equal and not 0):
 * no transaction at all. With st, the record's stamp decides, and a hit
 * records seq as the reading it is now current at. */
static bool cache_get(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t oid, const ks_stamp *st, uint64_t seq, uint32_t epoch,
                      tok_key **key)
{
    unsigned b = cache_bucket(slot, oid);
    bool hit = false;

    pthread_mutex_lock(&ctx->cache_lock);
    if (ctx->cache_epoch != epoch) {
        /* The keystore moved to another epoch: retire everything unsealed
         * under the old one. */
        cache_flush_locked(ctx);
        ctx->cache_epoch = epoch;
    }
    for (cache_ent *e = ctx->cache[b]; e; e = e->next) {
        if (e->slot != slot || e->oid != oid)
            continue;
        if (!st) {
            hit = seq != 0 && e->seq == seq;
        } else if (e->stamp.epoch == st->epoch && CRYPTO_memcmp(e->stamp.tag, st->tag, sizeof(st->tag)) == 0) {
            e->seq = seq;
            hit = true;
        }
        if (hit)
            *key = tok_key_ref(e->key);
        break;
    }
    pthread_mutex_unlock(&ctx->cache_lock);
    return hit;
}

static void cache_put(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t oid, const ks_stamp *st, uint64_t seq, tok_key *key)
{
    unsigned b = cache_bucket(slot, oid);
    cache_ent *e = calloc(1, sizeof(*e));

    if (!e)
        return;
    e->slot = slot;
    e->oid = oid;
    e->stamp = *st;
    e->seq = seq;
    e->key = tok_key_ref(key);
    cache_drop(ctx, slot, oid);
    pthread_mutex_lock(&ctx->cache_lock);
    if (ctx->cache_n >= CACHE_MAX || ks_secure_heap_pressed())
        cache_flush_locked(ctx);
    e->next = ctx->cache[b];
    ctx->cache[b] = e;
    ctx->cache_n++;
    pthread_mutex_unlock(&ctx->cache_lock);
}

/* A cached key the caller may see, or CKR_OBJECT_HANDLE_INVALID. */
static CK_RV cache_hand_out(const tok_access *ac, tok_key **key)
{
    if (tok_access_sees_private(ac, tok_key_private(*key)))
        return CKR_OK;
    tok_key_unref(*key);
    *key = NULL;
    return CKR_OBJECT_HANDLE_INVALID;
}

CK_RV tok_obj_key(tok_ctx *ctx, const tok_access *ac, uint64_t oid, tok_key **key)
{
    tok_key_at at;

    return tok_obj_key_at(ctx, ac, oid, key, &at);
}

bool tok_key_at_current(tok_ctx *ctx, const tok_key_at *at, uint64_t seq)
{
    return at->seq != 0 && (seq ? seq : ks_commit_seq(ctx->st)) == at->seq && ks_epoch(ctx->st) == at->epoch;
}

/* The part of tok_obj_key_at past the cache's first answer, in a read
 * transaction of its own; *storage_failed when the storage did not answer. */
static CK_RV key_read(tok_ctx *ctx, const tok_access *ac, uint64_t oid, tok_key **key, tok_key_at *at,
                      bool *storage_failed)
{
    CK_SLOT_ID slot = ac->slot;
    AUTO_TXN txn = NULL;
    AUTO_ATTRS attrs = TOK_ATTRS_INIT;
    ks_stamp st;
    uint64_t seq = 0;
    uint32_t epoch;
    CK_RV rv;
    int rc;

    rc = ks_read_begin(ctx->st, &txn);
    if (rc == KS_OK) {
        /* What the check below vouches for: this snapshot, which may be
         * older than the reading above. */
        seq = ks_txn_seq(txn);
        rc = ks_obj_stamp(txn, (uint32_t)slot, oid, &st);
    }
    if (rc == KS_ENOTFOUND)
        return CKR_OBJECT_HANDLE_INVALID;
    if (rc != KS_OK) {
        *storage_failed = rc == KS_EIO;
        return ks_to_ckr(rc);
    }
    epoch = ks_epoch(ctx->st);
    if (cache_get(ctx, slot, oid, &st, seq, epoch, key)) {
        *at = (tok_key_at){seq, epoch};
        return cache_hand_out(ac, key);
    }
    rv = obj_read_txn2(ctx, ac, txn, slot, oid, &attrs, READ_FULL, NULL, storage_failed);
    if (rv == CKR_OK && !tok_attrs_is_key(&attrs))
        rv = CKR_OBJECT_HANDLE_INVALID; /* a data object, a certificate: no key handle */
    if (rv == CKR_OK)
        rv = tok_key_from_attrs(&attrs, key);
    if (rv == CKR_OK) {
        cache_put(ctx, slot, oid, &st, seq, *key);
        *at = (tok_key_at){seq, epoch};
    }
    return rv;
}

CK_RV tok_obj_key_at(tok_ctx *ctx, const tok_access *ac, uint64_t oid, tok_key **key, tok_key_at *at)
{
    CK_SLOT_ID slot = ac->slot;
    uint64_t seq;
    uint32_t epoch;

    *key = NULL;
    *at = (tok_key_at){0, 0};
    if (oid & TOK_SOBJ_BIT)
        return tok_sobj_key(ctx, ac, oid, key);
    if (slot == 0 || slot > UINT32_MAX || oid == 0)
        return CKR_OBJECT_HANDLE_INVALID;
    /* The hot path: nothing committed since this key was last found current. */
    seq = ks_commit_seq(ctx->st);
    epoch = ks_epoch(ctx->st);
    if (cache_get(ctx, slot, oid, NULL, seq, epoch, key)) {
        *at = (tok_key_at){seq, epoch};
        return cache_hand_out(ac, key);
    }
    for (int attempt = 1;; attempt++) {
        bool storage_failed = false;
        CK_RV rv = key_read(ctx, ac, oid, key, at, &storage_failed);
        if (!read_again(storage_failed, attempt))
            return rv;
    }
}

uint64_t tok_change_seq(tok_ctx *ctx) { return ctx ? ks_commit_seq(ctx->st) : 0; }

/* ---- index verification ------------------------------------------------- */

long long tok_verify_index(tok_ctx *ctx, tok_idx_cb cb, void *arg, unsigned long long *missing)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG ns = 0;
    long long checked = 0;
    *missing = 0;
    if (tok_slot_list(ctx, &slots, &ns) != CKR_OK)
        return -1;
    for (CK_ULONG si = 0; si + 1 < ns; si++) { /* the last slot is the free one */
        tok_oid_vec objs = {NULL, 0, 0};
        ks_txn *txn;
        if (ks_read_begin(ctx->st, &txn) != KS_OK) {
            checked = -1;
            break;
        }
        /* A list or a lookup that could not be read is no verdict: the
         * check fails (-1) rather than report entries as missing. */
        if (ks_obj_foreach(txn, (uint32_t)slots[si], tok_oid_push, &objs) != KS_OK) {
            ks_read_end(txn);
            free(objs.v);
            checked = -1;
            break;
        }
        int irc = KS_OK;
        for (size_t i = 0; i < objs.n && irc == KS_OK; i++) {
            AUTO_ATTRS obj = TOK_ATTRS_INIT;
            bool storage_failed = false;
            if (obj_read_txn2(ctx, NULL, txn, slots[si], objs.v[i], &obj, READ_META, NULL, &storage_failed) !=
                CKR_OK) {
                if (storage_failed) {
                    irc = KS_EIO; /* not read: the check has no answer */
                    break;
                }
                continue; /* unreadable records are reported by the record check */
            }
            checked++;
            for (size_t k = 0; k < sizeof(indexed) / sizeof(indexed[0]); k++) {
                const tok_attr *a = tok_attrs_find(&obj, indexed[k]);
                if (!a)
                    continue;
                irc = ks_idx_contains(txn, (uint32_t)slots[si], (uint32_t)a->type, a->val, a->len, objs.v[i]);
                if (irc == KS_ENOTFOUND) {
                    irc = KS_OK;
                    (*missing)++;
                    if (cb)
                        cb(slots[si], objs.v[i], a->type, arg);
                } else if (irc != KS_OK) {
                    break;
                }
            }
        }
        ks_read_end(txn);
        free(objs.v);
        if (irc != KS_OK) {
            checked = -1;
            break;
        }
    }
    free(slots);
    return checked;
}
