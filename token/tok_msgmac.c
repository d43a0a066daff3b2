/* p11mk token layer: PKCS#11 3.0 message-based signing and verification
 * with the MAC mechanisms (tok_msgmac.h). Each message is an operation of
 * tok_op.c made with the init's mechanism and key: what C_SignInit checks
 * is checked once, at the init, and every message gets a fresh MAC. */
#include "tok_crypto.h"
#include "token/tok_msgmac.h"

#include <stdlib.h>
#include <string.h>

struct tok_msgmac {
    tok_op_kind kind;  /* TOK_OP_SIGN or TOK_OP_VERIFY */
    CK_MECHANISM mech; /* the init's; a _GENERAL MAC's length copied into maclen */
    CK_ULONG maclen;
    tok_key *key;
    tok_op *cur; /* the message under way, or the one a size query of C_SignMessage left */
    bool parts;  /* cur is a message in parts (begun with C_*MessageBegin) */
};

static CK_RV new_op(tok_msgmac *m, tok_op **op)
{
    return tok_op_init(m->kind, &m->mech, m->key, tok_key_attrs(m->key), op);
}

/* The message is over (done, failed or given up). */
static void end_message(tok_msgmac *m)
{
    tok_op_free(m->cur);
    m->cur = NULL;
    m->parts = false;
}

CK_RV tok_msgmac_init(bool verify, const CK_MECHANISM *mech, tok_key *key, tok_msgmac **out)
{
    const tok_mech_desc *d;
    tok_op *probe = NULL;
    tok_msgmac *m;
    CK_RV rv;

    if (!mech || !out)
        return CKR_ARGUMENTS_BAD;
    d = tok_mech_find(mech->mechanism);
    if (!d || !(d->flags & (verify ? CKF_MESSAGE_VERIFY : CKF_MESSAGE_SIGN)))
        return CKR_MECHANISM_INVALID;
    if (!key)
        return CKR_KEY_HANDLE_INVALID;
    if (!(m = calloc(1, sizeof(*m))))
        return CKR_HOST_MEMORY;
    m->kind = verify ? TOK_OP_VERIFY : TOK_OP_SIGN;
    m->mech = *mech;
    if (d->general && mech->pParameter && mech->ulParameterLen == sizeof(m->maclen)) {
        memcpy(&m->maclen, mech->pParameter, sizeof(m->maclen));
        m->mech.pParameter = &m->maclen;
    }
    m->key = tok_key_ref(key);
    rv = new_op(m, &probe); /* C_SignInit's checks, once */
    tok_op_free(probe);
    if (rv == CKR_OK && m->mech.pParameter != &m->maclen)
        m->mech = (CK_MECHANISM){mech->mechanism, NULL, 0}; /* it took none: keep no pointer of the caller's */
    if (rv != CKR_OK) {
        tok_msgmac_free(m);
        return rv;
    }
    *out = m;
    return CKR_OK;
}

void tok_msgmac_free(tok_msgmac *m)
{
    if (!m)
        return;
    tok_op_free(m->cur);
    tok_key_unref(m->key);
    free(m);
}

/* The MAC mechanisms take no per-message parameter. */
static CK_RV no_param(const void *param, CK_ULONG plen) { return param || plen ? CKR_MECHANISM_PARAM_INVALID : CKR_OK; }

CK_RV tok_msgmac_sign(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len, uint8_t *sig,
                      CK_ULONG *siglen)
{
    CK_RV rv;

    if (!m || !siglen || (!data && len))
        return CKR_ARGUMENTS_BAD;
    if (m->parts)
        return CKR_OPERATION_ACTIVE;
    if ((rv = no_param(param, plen)) != CKR_OK || (!m->cur && (rv = new_op(m, &m->cur)) != CKR_OK))
        return rv;
    rv = tok_op_oneshot(m->cur, data, len, sig, siglen);
    if (rv != CKR_BUFFER_TOO_SMALL && !(rv == CKR_OK && !sig))
        end_message(m);
    return rv;
}

CK_RV tok_msgmac_verify(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len,
                        const uint8_t *sig, CK_ULONG siglen)
{
    tok_op *op = NULL;
    CK_RV rv;

    if (!m || (!data && len) || (!sig && siglen))
        return CKR_ARGUMENTS_BAD;
    if (m->parts)
        return CKR_OPERATION_ACTIVE;
    if ((rv = no_param(param, plen)) == CKR_OK && (rv = new_op(m, &op)) == CKR_OK)
        rv = tok_op_verify(op, data, len, sig, siglen);
    tok_op_free(op);
    return rv;
}

CK_RV tok_msgmac_begin(tok_msgmac *m, const void *param, CK_ULONG plen)
{
    CK_RV rv;

    if (!m)
        return CKR_ARGUMENTS_BAD;
    if (m->parts)
        return CKR_OPERATION_ACTIVE;
    if ((rv = no_param(param, plen)) != CKR_OK)
        return rv;
    end_message(m); /* what a size query of C_SignMessage left */
    if ((rv = new_op(m, &m->cur)) == CKR_OK)
        m->parts = true;
    return rv;
}

/* The last part of a message in parts asks for the MAC: its length first,
 * so that a query or a short buffer takes nothing in. */
static CK_RV sign_last(tok_msgmac *m, const uint8_t *data, CK_ULONG len, uint8_t *sig, CK_ULONG *siglen)
{
    CK_ULONG need = 0;
    CK_RV rv = tok_op_final(m->cur, NULL, &need);

    if (rv != CKR_OK || !sig || *siglen < need) {
        *siglen = need;
        return rv != CKR_OK ? rv : sig ? CKR_BUFFER_TOO_SMALL : CKR_OK;
    }
    if ((rv = tok_op_update(m->cur, data, len, NULL, NULL)) != CKR_OK)
        return rv;
    return tok_op_final(m->cur, sig, siglen);
}

/* A part of a message in parts: its arguments. */
static CK_RV part_args(const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len)
{
    return !data && len ? CKR_ARGUMENTS_BAD : no_param(param, plen);
}

CK_RV tok_msgmac_sign_next(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len,
                           uint8_t *sig, CK_ULONG *siglen)
{
    CK_RV rv;

    if (!m || !m->parts)
        return m ? CKR_OPERATION_NOT_INITIALIZED : CKR_ARGUMENTS_BAD;
    if ((rv = part_args(param, plen, data, len)) == CKR_OK)
        rv = siglen ? sign_last(m, data, len, sig, siglen) : tok_op_update(m->cur, data, len, NULL, NULL);
    /* A part ends the message when it fails; the last one also when it
     * gives the MAC. */
    if ((rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) || (rv == CKR_OK && siglen && sig))
        end_message(m);
    return rv;
}

CK_RV tok_msgmac_verify_next(tok_msgmac *m, const void *param, CK_ULONG plen, const uint8_t *data, CK_ULONG len,
                             const uint8_t *sig, CK_ULONG siglen)
{
    CK_RV rv;

    if (!m || !m->parts)
        return m ? CKR_OPERATION_NOT_INITIALIZED : CKR_ARGUMENTS_BAD;
    if ((rv = part_args(param, plen, data, len)) == CKR_OK)
        rv = tok_op_update(m->cur, data, len, NULL, NULL);
    if (rv == CKR_OK && sig)
        rv = tok_op_verify_final(m->cur, sig, siglen);
    if (rv != CKR_OK || sig)
        end_message(m);
    return rv;
}
