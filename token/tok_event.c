/* p11mk token layer: slot events for C_WaitForSlotEvent.
 *
 * A slot's state is whether it holds a token and, if so, the token's
 * incarnation (which changes when any process re-initializes it). A watch
 * remembers the states it last reported; an event is a slot whose state now
 * differs: a token initialized on the free slot, re-initialized, or deleted
 * (p11mk-admin delete-token), by this process or any other. The free slot
 * that appears after a token is made is not an event of its own (it holds
 * no token). A change undone between two looks (a token made and deleted)
 * is no event. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t id;
    uint64_t inc;
} slot_state;

struct tok_slot_watch {
    slot_state *v; /* ascending ids */
    size_t n;
};

/* The tokens and their incarnations now, in one read transaction; *eio
 * (may be NULL) when the storage did not answer (KS_EIO), not damage. */
static CK_RV read_states(tok_ctx *ctx, slot_state **out, size_t *n, bool *eio)
{
    AUTO_TXN txn = NULL;
    uint32_t *ids = NULL;
    size_t nt = 0;
    slot_state *v = NULL;
    int rc = ks_read_begin(ctx->st, &txn);

    if (rc == KS_OK)
        rc = ks_token_list(txn, &ids, &nt);
    if (rc == KS_OK && !(v = calloc(nt ? nt : 1, sizeof(*v))))
        rc = KS_ENOMEM;
    for (size_t i = 0; rc == KS_OK && i < nt; i++) {
        v[i].id = ids[i];
        rc = ks_token_incarnation(txn, ids[i], &v[i].inc);
    }
    free(ids);
    if (eio)
        *eio = rc == KS_EIO;
    if (rc != KS_OK) {
        free(v);
        return ks_to_ckr(rc);
    }
    *out = v;
    *n = nt;
    return CKR_OK;
}

CK_RV tok_slot_watch_new(tok_ctx *ctx, tok_slot_watch **out)
{
    tok_slot_watch *w = calloc(1, sizeof(*w));
    bool eio = false;
    CK_RV rv = w ? read_states(ctx, &w->v, &w->n, &eio) : CKR_HOST_MEMORY;
    /* A read with nothing handed out yet: again from a new transaction
     * when the storage failed it (a connection lost on the way), not when
     * a record is damaged (said once). */
    for (int attempt = 1; attempt < KS_READ_TRIES && rv != CKR_OK && eio; attempt++)
        rv = read_states(ctx, &w->v, &w->n, &eio);

    if (rv != CKR_OK) {
        free(w);
        return rv;
    }
    *out = w;
    return CKR_OK;
}

void tok_slot_watch_free(tok_slot_watch *w)
{
    if (!w)
        return;
    free(w->v);
    free(w);
}

CK_RV tok_slot_watch_next(tok_ctx *ctx, tok_slot_watch *w, CK_SLOT_ID *slot)
{
    slot_state *now = NULL;
    size_t nn = 0, i = 0, j = 0;
    CK_RV rv = read_states(ctx, &now, &nn, NULL);

    if (rv != CKR_OK) /* the codes C_WaitForSlotEvent may return */
        return rv == CKR_HOST_MEMORY ? rv : CKR_FUNCTION_FAILED;
    /* Both lists ascend: skip what is the same; the first difference is the event. */
    while (i < w->n && j < nn && w->v[i].id == now[j].id && w->v[i].inc == now[j].inc)
        i++, j++;
    if (i < w->n && j < nn && w->v[i].id == now[j].id) { /* re-initialized */
        w->v[i].inc = now[j].inc;
        *slot = now[j].id;
    } else if (i < w->n && (j == nn || w->v[i].id < now[j].id)) { /* deleted */
        *slot = w->v[i].id;
        memmove(&w->v[i], &w->v[i + 1], (w->n - i - 1) * sizeof(*w->v));
        w->n--;
    } else if (j < nn) { /* initialized: it takes its place in the remembered list */
        slot_state *v = realloc(w->v, (w->n + 1) * sizeof(*v));
        if (v) {
            w->v = v;
            memmove(&w->v[i + 1], &w->v[i], (w->n - i) * sizeof(*w->v));
            w->v[i] = now[j];
            w->n++;
            *slot = now[j].id;
        } else {
            rv = CKR_HOST_MEMORY;
        }
    } else {
        rv = CKR_NO_EVENT;
    }
    free(now);
    return rv;
}
