/* p11mk token layer: the token keys this process holds.
 *
 * A login unwraps a token's key (tok_login.c); it stays here, in memory kept
 * out of core dumps (ks_secmem), tagged with the token's incarnation, until
 * logout, re-initialization or C_Finalize. tk_lock is a leaf lock. */
#include "tok_internal.h"
#include "tok_pin.h"

#include <stdlib.h>
#include <string.h>

bool tok_tk_get(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t inc, uint8_t tk[TOK_TK_LEN])
{
    bool found = false;

    pthread_mutex_lock(&ctx->tk_lock);
    for (size_t i = 0; i < ctx->ntks; i++)
        if (ctx->tks[i].slot == slot && ctx->tks[i].inc == inc) {
            memcpy(tk, ctx->tks[i].key, TOK_TK_LEN);
            found = true;
            break;
        }
    pthread_mutex_unlock(&ctx->tk_lock);
    return found;
}

static void tk_drop_locked(tok_ctx *ctx, CK_SLOT_ID slot)
{
    for (size_t i = 0; i < ctx->ntks;) {
        if (ctx->tks[i].slot == slot) {
            ks_secmem_free(ctx->tks[i].key);
            ctx->tks[i] = ctx->tks[--ctx->ntks];
        } else {
            i++;
        }
    }
}

void tok_tk_install(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t inc, const uint8_t tk[TOK_TK_LEN])
{
    uint8_t *key = ks_secmem_alloc(TOK_TK_LEN);
    struct tok_tk *v;

    if (!key)
        return; /* private objects stay out of reach; the login itself stands */
    memcpy(key, tk, TOK_TK_LEN);
    pthread_mutex_lock(&ctx->tk_lock);
    tk_drop_locked(ctx, slot);
    v = realloc(ctx->tks, (ctx->ntks + 1) * sizeof(*v));
    if (v) {
        ctx->tks = v;
        ctx->tks[ctx->ntks++] = (struct tok_tk){slot, inc, key};
        key = NULL;
    }
    pthread_mutex_unlock(&ctx->tk_lock);
    ks_secmem_free(key);
}

void tok_tk_drop(tok_ctx *ctx, CK_SLOT_ID slot)
{
    pthread_mutex_lock(&ctx->tk_lock);
    tk_drop_locked(ctx, slot);
    pthread_mutex_unlock(&ctx->tk_lock);
}

void tok_tk_drop_all(tok_ctx *ctx)
{
    pthread_mutex_lock(&ctx->tk_lock);
    for (size_t i = 0; i < ctx->ntks; i++)
        ks_secmem_free(ctx->tks[i].key);
    free(ctx->tks);
    ctx->tks = NULL;
    ctx->ntks = 0;
    pthread_mutex_unlock(&ctx->tk_lock);
}
