/* p11mk token layer: PINs (C_Login, C_InitToken, C_InitPIN, C_SetPIN) and
 * their failure counters. */
#include "token/tok_internal.h"
#include "token/tok_pin.h"

#include <openssl/crypto.h>

static CK_RV pin_len_check(const uint8_t *pin, CK_ULONG len)
{
    if (!pin && len)
        return CKR_ARGUMENTS_BAD;
    if (len < TOK_PIN_MIN_LEN || len > TOK_PIN_MAX_LEN)
        return CKR_PIN_LEN_RANGE;
    return CKR_OK;
}

typedef struct {
    uint32_t id;
    CK_ATTRIBUTE_TYPE field; /* TOKR_SO_FAILS / TOKR_USER_FAILS */
    bool success;
    CK_ULONG fails_after;
} fail_update;

/* Read-modify-write of a failure counter inside one write transaction, so
 * concurrent processes count every attempt. */
static int fails_update_fn(ks_txn *txn, void *arg)
{
    fail_update *u = arg;
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    uint8_t *blob = NULL;
    size_t len = 0;
    CK_ULONG fails = 0;
    int rc = ks_token_get(txn, u->id, &blob, &len);

    if (rc != KS_OK)
        return rc;
    rc = tok_attrs_parse(blob, len, &rec) == 0 ? KS_OK : KS_ECORRUPT;
    ks_buf_free(blob, len);
    if (rc != KS_OK)
        return rc;
    tok_attrs_get_ulong(&rec, u->field, &fails);
    if (u->success && fails == 0) {
        u->fails_after = 0;
        return KS_EEXIST; /* nothing to write: abort the transaction */
    }
    fails = u->success ? 0 : (fails < TOK_MAX_PIN_TRIES ? fails + 1 : fails);
    u->fails_after = fails;
    if (tok_attrs_set_ulong(&rec, u->field, fails) != 0)
        return KS_ENOMEM;
    return tok_token_put(txn, u->id, &rec);
}

static CK_RV record_attempt(tok_ctx *ctx, CK_SLOT_ID slot, CK_USER_TYPE who, bool success)
{
    fail_update u = {(uint32_t)slot, who == CKU_SO ? TOKR_SO_FAILS : TOKR_USER_FAILS, success, 0};
    int rc = ks_write(ctx->st, fails_update_fn, &u);

    if (rc == KS_EROFS) {
        /* A read-only keystore cannot count attempts; whoever can read it
         * could attack the PIN hashes offline anyway. */
        ks_log(KS_LOG_DEBUG, "token %lu: PIN attempt not counted (read-only keystore)", (unsigned long)slot);
        return CKR_OK;
    }
    if (rc != KS_OK && rc != KS_EEXIST)
        return ks_to_ckr(rc);
    if (!success && u.fails_after >= TOK_MAX_PIN_TRIES)
        ks_log(KS_LOG_WARN, "token %lu: %s PIN locked after %lu failed attempts", (unsigned long)slot,
               who == CKU_SO ? "SO" : "user", TOK_MAX_PIN_TRIES);
    else if (!success)
        ks_log(KS_LOG_INFO, "token %lu: wrong %s PIN (%lu of %lu attempts before it locks)", (unsigned long)slot,
               who == CKU_SO ? "SO" : "user", (unsigned long)u.fails_after, TOK_MAX_PIN_TRIES);
    else
        ks_log(KS_LOG_DEBUG, "token %lu: %s PIN accepted", (unsigned long)slot, who == CKU_SO ? "SO" : "user");
    return CKR_OK;
}

/* Verify a PIN against the token record, counting the attempt. */
static CK_RV pin_check(tok_ctx *ctx, CK_SLOT_ID slot, const tok_attrs *rec, CK_USER_TYPE who,
                       const uint8_t *pin, CK_ULONG len)
{
    const tok_attr *h = tok_attrs_find(rec, who == CKU_SO ? TOKR_SO_PIN : TOKR_USER_PIN);
    CK_ULONG fails = 0;
    bool ok;
    CK_RV rv;

    if (!pin && len)
        return CKR_ARGUMENTS_BAD;
    if (!h || h->len != TOK_PIN_REC_LEN)
        return who == CKU_SO ? CKR_DEVICE_ERROR : CKR_USER_PIN_NOT_INITIALIZED;
    tok_attrs_get_ulong(rec, who == CKU_SO ? TOKR_SO_FAILS : TOKR_USER_FAILS, &fails);
    if (fails >= TOK_MAX_PIN_TRIES)
        return CKR_PIN_LOCKED;
    ok = len <= TOK_PIN_MAX_LEN && tok_pin_verify(pin, len, h->val);
    rv = record_attempt(ctx, slot, who, ok);
    if (rv != CKR_OK)
        return rv;
    return ok ? CKR_OK : CKR_PIN_INCORRECT;
}

CK_RV tok_login_check(tok_ctx *ctx, CK_SLOT_ID slot, CK_USER_TYPE who, const uint8_t *pin, CK_ULONG len)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = tok_token_load(ctx, slot, &rec);

    if (rv != CKR_OK)
        return rv;
    return pin_check(ctx, slot, &rec, who, pin, len);
}

typedef struct {
    uint32_t id;
    const tok_attrs *rec;
    bool wipe;
} token_write;

static int token_write_fn(ks_txn *txn, void *arg)
{
    token_write *w = arg;
    int rc;

    if (w->wipe) {
        rc = ks_token_del(txn, w->id);
        if (rc != KS_OK && rc != KS_ENOTFOUND)
            return rc;
    }
    return tok_token_put(txn, w->id, w->rec);
}

static CK_RV set_pin_field(tok_attrs *rec, CK_ATTRIBUTE_TYPE field, CK_ATTRIBUTE_TYPE fails_field,
                           const uint8_t *pin, CK_ULONG len)
{
    uint8_t h[TOK_PIN_REC_LEN];
    int rc;

    if (tok_pin_hash(pin, len, h) != 0)
        return CKR_GENERAL_ERROR;
    rc = tok_attrs_set(rec, field, h, sizeof(h)) | tok_attrs_set_ulong(rec, fails_field, 0);
    OPENSSL_cleanse(h, sizeof(h));
    return rc == 0 ? CKR_OK : CKR_HOST_MEMORY;
}

CK_RV tok_token_init(tok_ctx *ctx, CK_SLOT_ID slot, const uint8_t *so_pin, CK_ULONG len, const uint8_t label[32])
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = pin_len_check(so_pin, len);
    bool exists;
    int rc;

    if (rv != CKR_OK)
        return rv;
    rv = tok_token_load(ctx, slot, &rec);
    exists = rv == CKR_OK;
    if (!exists) {
        if (rv != CKR_SLOT_ID_INVALID || slot != tok_free_slot_id(ctx))
            return rv;
    } else {
        rv = pin_check(ctx, slot, &rec, CKU_SO, so_pin, len);
        if (rv != CKR_OK)
            return rv;
        tok_attrs_free(&rec);
    }
    rv = set_pin_field(&rec, TOKR_SO_PIN, TOKR_SO_FAILS, so_pin, len);
    if (rv != CKR_OK)
        return rv;
    if (tok_attrs_set(&rec, TOKR_LABEL, label, 32) != 0)
        return CKR_HOST_MEMORY;
    tok_cache_flush(ctx);
    rc = ks_write(ctx->st, token_write_fn, &(token_write){(uint32_t)slot, &rec, exists});
    if (rc != KS_OK)
        return ks_to_ckr(rc);
    ks_log(KS_LOG_INFO, "token %lu %s", (unsigned long)slot, exists ? "re-initialized" : "initialized");
    return CKR_OK;
}

CK_RV tok_pin_init(tok_ctx *ctx, CK_SLOT_ID slot, const uint8_t *pin, CK_ULONG len)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = pin_len_check(pin, len);
    int rc;

    if (rv == CKR_OK)
        rv = tok_token_load(ctx, slot, &rec);
    if (rv == CKR_OK)
        rv = set_pin_field(&rec, TOKR_USER_PIN, TOKR_USER_FAILS, pin, len);
    if (rv != CKR_OK)
        return rv;
    rc = ks_write(ctx->st, token_write_fn, &(token_write){(uint32_t)slot, &rec, false});
    if (rc == KS_OK)
        ks_log(KS_LOG_INFO, "token %lu: user PIN set by the SO", (unsigned long)slot);
    return ks_to_ckr(rc);
}

CK_RV tok_pin_set(tok_ctx *ctx, CK_SLOT_ID slot, CK_USER_TYPE who, const uint8_t *old, CK_ULONG oldlen,
                  const uint8_t *pin, CK_ULONG len)
{
    AUTO_ATTRS rec = TOK_ATTRS_INIT;
    CK_RV rv = pin_len_check(pin, len);
    int rc;

    if (rv == CKR_OK)
        rv = tok_token_load(ctx, slot, &rec);
    if (rv == CKR_OK)
        rv = pin_check(ctx, slot, &rec, who, old, oldlen);
    if (rv != CKR_OK)
        return rv;
    /* Reload: pin_check rewrote the record's counter. */
    tok_attrs_free(&rec);
    rv = tok_token_load(ctx, slot, &rec);
    if (rv == CKR_OK)
        rv = set_pin_field(&rec, who == CKU_SO ? TOKR_SO_PIN : TOKR_USER_PIN,
                           who == CKU_SO ? TOKR_SO_FAILS : TOKR_USER_FAILS, pin, len);
    if (rv != CKR_OK)
        return rv;
    rc = ks_write(ctx->st, token_write_fn, &(token_write){(uint32_t)slot, &rec, false});
    if (rc == KS_OK)
        ks_log(KS_LOG_INFO, "token %lu: %s PIN changed", (unsigned long)slot, who == CKU_SO ? "SO" : "user");
    return ks_to_ckr(rc);
}

