/* p11mk token layer: saved operation states (tok_opstate.h says what they
 * hold and why).
 *
 *   state = "p11mk-os" | version 1 | nonce(12) | AES-256-GCM(body) | tag(16)
 *   aad   = the 21 bytes before the ciphertext | slot (LE64)
 *   body  = count(1) | count x entry
 *   entry = kind(1) | multi(1) | mechanism(LE64) | MAC length(LE64)
 *           | key handle(LE64) | input length(LE32) | input */
#include "tok_internal.h"
#include "tok_crypto.h"
#include "tok_envelope.h"
#include "token/tok_opstate.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define MAGIC "p11mk-os"
#define MAGIC_LEN 8
#define VERSION 1
#define NONCE_LEN 12
#define TAG_LEN 16
#define HDR_LEN (MAGIC_LEN + 1 + NONCE_LEN)
#define ENTRY_FIXED (1 + 1 + 8 + 8 + 8 + 4)

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void make_aad(const uint8_t hdr[HDR_LEN], CK_SLOT_ID slot, uint8_t aad[HDR_LEN + 8])
{
    memcpy(aad, hdr, HDR_LEN);
    put_le(aad + HDR_LEN, slot, 8);
}

CK_RV tok_opstate_save(tok_ctx *ctx, CK_SLOT_ID slot, tok_op *const ops[TOK_OPSTATE_KINDS],
                       const bool multi[TOK_OPSTATE_KINDS], uint8_t *out, CK_ULONG *outlen)
{
    tok_op_saved sv[TOK_OPSTATE_KINDS];
    uint8_t aad[HDR_LEN + 8], *body, *p;
    size_t n = 0, blen = 1, total;
    uint64_t key = 0;
    CK_RV rv;

    if (!outlen)
        return CKR_ARGUMENTS_BAD;
    for (int k = TOK_OP_ENCRYPT; k < TOK_OPSTATE_KINDS; k++) {
        if (!ops[k])
            continue;
        if ((rv = tok_op_save(ops[k], &sv[n])) != CKR_OK)
            return rv;
        if (sv[n].key_handle && key && sv[n].key_handle != key)
            return CKR_STATE_UNSAVEABLE; /* one authentication key comes back at C_SetOperationState */
        if (sv[n].key_handle)
            key = sv[n].key_handle;
        blen += ENTRY_FIXED + sv[n].fedlen;
        n++;
    }
    if (!n)
        return CKR_OPERATION_NOT_INITIALIZED;
    total = HDR_LEN + blen + TAG_LEN;
    if (!out || *outlen < total) {
        *outlen = total;
        return out ? CKR_BUFFER_TOO_SMALL : CKR_OK;
    }
    if (!(body = OPENSSL_malloc(blen)))
        return CKR_HOST_MEMORY;
    p = body;
    *p++ = (uint8_t)n;
    for (size_t i = 0; i < n; i++) {
        p[0] = (uint8_t)sv[i].kind;
        p[1] = multi[sv[i].kind] ? 1 : 0;
        put_le(p + 2, sv[i].mech, 8);
        put_le(p + 10, sv[i].maclen, 8);
        put_le(p + 18, sv[i].key_handle, 8);
        put_le(p + 26, sv[i].fedlen, 4);
        if (sv[i].fedlen)
            memcpy(p + ENTRY_FIXED, sv[i].fed, sv[i].fedlen);
        p += ENTRY_FIXED + sv[i].fedlen;
    }
    memcpy(out, MAGIC, MAGIC_LEN);
    out[MAGIC_LEN] = VERSION;
    rv = tok_random(out + MAGIC_LEN + 1, NONCE_LEN);
    make_aad(out, slot, aad);
    if (rv == CKR_OK && tok_gcm(1, ctx->opstate_key, out + MAGIC_LEN + 1, aad, sizeof(aad), body, blen, out + HDR_LEN,
                                out + HDR_LEN + blen) != 0)
        rv = CKR_FUNCTION_FAILED;
    OPENSSL_clear_free(body, blen);
    if (rv == CKR_OK)
        *outlen = total;
    return rv;
}

/* One entry of an opened state, checked. */
typedef struct {
    tok_op_kind kind;
    bool multi;
    CK_ULONG maclen;
    const tok_mech_desc *d;
    uint64_t key;
    const uint8_t *fed;
    size_t fedlen;
} entry;

static bool parse(const uint8_t *body, size_t blen, entry e[TOK_OPSTATE_KINDS], size_t *count)
{
    const uint8_t *p = body + 1, *end = body + blen;
    bool seen[TOK_OPSTATE_KINDS] = {false};

    if (blen < 1 || body[0] < 1 || body[0] > TOK_OPSTATE_KINDS - 1)
        return false;
    *count = body[0];
    for (size_t i = 0; i < *count; i++) {
        if ((size_t)(end - p) < ENTRY_FIXED)
            return false;
        e[i].kind = p[0];
        e[i].multi = p[1] != 0;
        e[i].d = tok_mech_find(get_le(p + 2, 8));
        e[i].maclen = get_le(p + 10, 8);
        e[i].key = get_le(p + 18, 8);
        e[i].fedlen = get_le(p + 26, 4);
        e[i].fed = p + ENTRY_FIXED;
        if (e[i].kind < TOK_OP_SIGN || e[i].kind > TOK_OP_DIGEST || seen[e[i].kind] || !e[i].d ||
            (e[i].d->mc != M_DIGEST && e[i].d->mc != M_HMAC && e[i].d->mc != M_CMAC) ||
            (e[i].kind == TOK_OP_DIGEST) != (e[i].d->mc == M_DIGEST) || (e[i].kind == TOK_OP_DIGEST) != !e[i].key ||
            e[i].fedlen > TOK_OPSTATE_MAX_DATA || (size_t)(end - e[i].fed) < e[i].fedlen)
            return false;
        seen[e[i].kind] = true;
        p = e[i].fed + e[i].fedlen;
    }
    return p == end;
}

/* One operation made anew and given its input again. */
static CK_RV replay(tok_ctx *ctx, const tok_access *ac, const entry *e, tok_op **op)
{
    CK_MECHANISM m = {e->d->type, NULL, 0};
    CK_ULONG maclen = e->maclen;
    tok_key *key = NULL;
    CK_RV rv = CKR_OK;

    if (e->d->general) {
        m.pParameter = &maclen;
        m.ulParameterLen = sizeof(maclen);
    }
    if (e->key && tok_obj_key(ctx, ac, e->key, &key) != CKR_OK)
        return CKR_KEY_CHANGED; /* gone, or no longer there for this caller */
    rv = tok_op_init(e->kind, &m, key, key ? tok_key_attrs(key) : NULL, op);
    if (rv != CKR_OK && rv != CKR_HOST_MEMORY)
        rv = e->key ? CKR_KEY_CHANGED : CKR_SAVED_STATE_INVALID; /* the key's usage or type changed since */
    if (rv == CKR_OK) {
        tok_op_set_key_handle(*op, e->key);
        if (e->fedlen)
            rv = tok_op_update(*op, e->fed, e->fedlen, NULL, NULL);
    }
    tok_key_unref(key);
    return rv;
}

CK_RV tok_opstate_restore(tok_ctx *ctx, const tok_access *ac, const uint8_t *in, CK_ULONG len, CK_OBJECT_HANDLE enc_key,
                          CK_OBJECT_HANDLE auth_key, tok_op *ops[TOK_OPSTATE_KINDS], bool multi[TOK_OPSTATE_KINDS])
{
    entry e[TOK_OPSTATE_KINDS];
    uint8_t aad[HDR_LEN + 8], tag[TAG_LEN], *body;
    size_t blen, count = 0;
    uint64_t key = 0;
    CK_RV rv = CKR_OK;

    if (!in || len < HDR_LEN + 1 + TAG_LEN ||
        len > HDR_LEN + 1 + (TOK_OPSTATE_KINDS - 1) * (ENTRY_FIXED + TOK_OPSTATE_MAX_DATA) + TAG_LEN ||
        memcmp(in, MAGIC, MAGIC_LEN) != 0 || in[MAGIC_LEN] != VERSION)
        return CKR_SAVED_STATE_INVALID;
    blen = len - HDR_LEN - TAG_LEN;
    if (!(body = OPENSSL_malloc(blen)))
        return CKR_HOST_MEMORY;
    make_aad(in, ac->slot, aad);
    memcpy(tag, in + HDR_LEN + blen, TAG_LEN);
    if (tok_gcm(0, ctx->opstate_key, in + MAGIC_LEN + 1, aad, sizeof(aad), in + HDR_LEN, blen, body, tag) != 0 ||
        !parse(body, blen, e, &count))
        rv = CKR_SAVED_STATE_INVALID;
    /* The keys PKCS#11 asks for: the MAC's key again, nothing else. */
    for (size_t i = 0; rv == CKR_OK && i < count; i++)
        key = e[i].key ? e[i].key : key;
    if (rv == CKR_OK && enc_key != CK_INVALID_HANDLE)
        rv = CKR_KEY_NOT_NEEDED;
    else if (rv == CKR_OK && key && auth_key == CK_INVALID_HANDLE)
        rv = CKR_KEY_NEEDED;
    else if (rv == CKR_OK && !key && auth_key != CK_INVALID_HANDLE)
        rv = CKR_KEY_NOT_NEEDED;
    else if (rv == CKR_OK && key != auth_key)
        rv = CKR_KEY_CHANGED;
    for (size_t i = 0; rv == CKR_OK && i < count; i++) {
        rv = replay(ctx, ac, &e[i], &ops[e[i].kind]);
        multi[e[i].kind] = e[i].multi;
    }
    if (rv != CKR_OK)
        for (int k = 0; k < TOK_OPSTATE_KINDS; k++) {
            tok_op_free(ops[k]);
            ops[k] = NULL;
            multi[k] = false;
        }
    OPENSSL_clear_free(body, blen);
    return rv;
}
