/* p11mk token layer: saved operation states (tok_opstate.h says what they
 * hold and why).
 *
 *   state = "p11mk-os" | version 1 | nonce(12) | AES-256-GCM(body) | tag(16)
 *   aad   = the 21 bytes before the ciphertext | slot (LE64)
 *   body  = the attribute codec (tok_attrs_serialize) of, for each saved
 *           operation of kind k, its fields at OPS_FIELD(k, f): mechanism,
 *           a part given, MAC length, key handle, input so far */
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
#define AAD_LEN (HDR_LEN + 8)

enum { F_MECH, F_MULTI, F_MACLEN, F_KEY, F_DATA, F_COUNT };
#define OPS_FIELD(k, f) (CKA_VENDOR_DEFINED + 0x7300UL + (CK_ULONG)(k)*F_COUNT + (f))

static void make_aad(const uint8_t hdr[HDR_LEN], CK_SLOT_ID slot, uint8_t aad[AAD_LEN])
{
    memcpy(aad, hdr, HDR_LEN);
    for (int i = 0; i < 8; i++)
        aad[HDR_LEN + i] = (uint8_t)((uint64_t)slot >> (8 * i));
}

/* The body of the session's state: CKR_OPERATION_NOT_INITIALIZED when no
 * operation is active, CKR_STATE_UNSAVEABLE (tok_op_save), or two keys. */
static CK_RV body_of(tok_op *const ops[TOK_OPSTATE_KINDS], const bool multi[TOK_OPSTATE_KINDS], tok_attrs *body)
{
    uint64_t key = 0;
    size_t n = 0;
    CK_RV rv;

    for (int k = TOK_OP_ENCRYPT; k < TOK_OPSTATE_KINDS; k++) {
        tok_op_saved sv;
        if (!ops[k])
            continue;
        if ((rv = tok_op_save(ops[k], &sv)) != CKR_OK)
            return rv;
        if (sv.key_handle && key && sv.key_handle != key)
            return CKR_STATE_UNSAVEABLE; /* one authentication key comes back at C_SetOperationState */
        if (sv.key_handle)
            key = sv.key_handle;
        if (tok_attrs_set_ulong(body, OPS_FIELD(k, F_MECH), sv.mech) != 0 ||
            tok_attrs_set_bool(body, OPS_FIELD(k, F_MULTI), multi[k]) != 0 ||
            tok_attrs_set_ulong(body, OPS_FIELD(k, F_MACLEN), sv.maclen) != 0 ||
            tok_attrs_set_ulong(body, OPS_FIELD(k, F_KEY), (CK_ULONG)sv.key_handle) != 0 ||
            tok_attrs_set(body, OPS_FIELD(k, F_DATA), sv.fed, (CK_ULONG)sv.fedlen) != 0)
            return CKR_HOST_MEMORY;
        n++;
    }
    return n ? CKR_OK : CKR_OPERATION_NOT_INITIALIZED;
}

CK_RV tok_opstate_save(tok_ctx *ctx, CK_SLOT_ID slot, tok_op *const ops[TOK_OPSTATE_KINDS],
                       const bool multi[TOK_OPSTATE_KINDS], uint8_t *out, CK_ULONG *outlen)
{
    tok_attrs body = TOK_ATTRS_INIT;
    uint8_t aad[AAD_LEN], *blob = NULL;
    size_t blen = 0, total;
    CK_RV rv;

    if (!outlen)
        return CKR_ARGUMENTS_BAD;
    rv = body_of(ops, multi, &body);
    if (rv == CKR_OK && tok_attrs_serialize(&body, &blob, &blen) != 0)
        rv = CKR_HOST_MEMORY;
    tok_attrs_free(&body);
    if (rv != CKR_OK)
        return rv;
    total = HDR_LEN + blen + TAG_LEN;
    if (!out || *outlen < total) {
        *outlen = total;
        rv = out ? CKR_BUFFER_TOO_SMALL : CKR_OK;
    } else {
        memcpy(out, MAGIC, MAGIC_LEN);
        out[MAGIC_LEN] = VERSION;
        rv = tok_random(out + MAGIC_LEN + 1, NONCE_LEN);
        make_aad(out, slot, aad);
        if (rv == CKR_OK && tok_gcm(1, ctx->opstate_key, out + MAGIC_LEN + 1, aad, sizeof(aad), blob, blen,
                                    out + HDR_LEN, out + HDR_LEN + blen) != 0)
            rv = CKR_FUNCTION_FAILED;
        if (rv == CKR_OK)
            *outlen = total;
    }
    ks_buf_free(blob, blen);
    return rv;
}

/* One saved operation, checked. */
typedef struct {
    tok_op_kind kind;
    bool multi;
    CK_ULONG maclen;
    const tok_mech_desc *d;
    uint64_t key;
    const uint8_t *fed;
    size_t fedlen;
} entry;

/* The saved operation of kind k: false when the body holds none, or a
 * malformed one (*bad). */
static bool entry_of(const tok_attrs *body, int k, entry *e, bool *bad)
{
    CK_ULONG mech, key;
    const tok_attr *data = tok_attrs_find(body, OPS_FIELD(k, F_DATA));

    if (!tok_attrs_get_ulong(body, OPS_FIELD(k, F_MECH), &mech))
        return false;
    e->kind = (tok_op_kind)k;
    e->d = tok_mech_find(mech);
    e->multi = tok_attrs_get_bool(body, OPS_FIELD(k, F_MULTI), false);
    e->fed = data ? data->val : NULL;
    e->fedlen = data ? data->len : 0;
    *bad = !tok_attrs_get_ulong(body, OPS_FIELD(k, F_MACLEN), &e->maclen) ||
           !tok_attrs_get_ulong(body, OPS_FIELD(k, F_KEY), &key) || !data || !e->d ||
           (e->d->mc != M_DIGEST && e->d->mc != M_HMAC && e->d->mc != M_CMAC) ||
           (k == TOK_OP_DIGEST) != (e->d->mc == M_DIGEST) || (k == TOK_OP_DIGEST) != !key ||
           e->fedlen > TOK_OPSTATE_MAX_DATA;
    e->key = key;
    return !*bad;
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
    tok_attrs body = TOK_ATTRS_INIT;
    entry e[TOK_OPSTATE_KINDS];
    uint8_t aad[AAD_LEN], tag[TAG_LEN], *plain;
    size_t blen, count = 0;
    uint64_t key = 0;
    bool bad = false;
    CK_RV rv = CKR_OK;
    int prc;

    if (!in || len < HDR_LEN + TAG_LEN + 1 || len > HDR_LEN + TAG_LEN + 6 * TOK_OPSTATE_MAX_DATA ||
        memcmp(in, MAGIC, MAGIC_LEN) != 0 || in[MAGIC_LEN] != VERSION)
        return CKR_SAVED_STATE_INVALID;
    blen = len - HDR_LEN - TAG_LEN;
    if (!(plain = OPENSSL_malloc(blen)))
        return CKR_HOST_MEMORY;
    make_aad(in, ac->slot, aad);
    memcpy(tag, in + HDR_LEN + blen, TAG_LEN);
    if (tok_gcm(0, ctx->opstate_key, in + MAGIC_LEN + 1, aad, sizeof(aad), in + HDR_LEN, blen, plain, tag) != 0)
        rv = CKR_SAVED_STATE_INVALID;
    else if ((prc = tok_attrs_parse(plain, blen, &body)) != 0)
        rv = prc == TOK_ATTRS_NOMEM ? CKR_HOST_MEMORY : CKR_SAVED_STATE_INVALID;
    OPENSSL_clear_free(plain, blen);
    for (int k = TOK_OP_ENCRYPT; rv == CKR_OK && !bad && k < TOK_OPSTATE_KINDS; k++)
        if (entry_of(&body, k, &e[count], &bad)) {
            key = e[count].key ? e[count].key : key;
            count++;
        }
    if (rv == CKR_OK && (bad || !count))
        rv = CKR_SAVED_STATE_INVALID;
    /* The keys PKCS#11 asks for: the MAC's key again, nothing else. */
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
    tok_attrs_free(&body);
    return rv;
}
