/* p11mk token layer: session objects.
 *
 * Objects with CKA_TOKEN false live in this process's memory, in the same
 * object model as token objects: the same handles space (their handles
 * carry TOK_SOBJ_BIT), the same access rules (tok_access.c), the same
 * tok_obj_* functions (tok_token.c dispatches on the handle). Each belongs
 * to the session that made it (tok_access.owner) and goes with it, or with
 * its token's last session; its parsed key is kept with it once used
 * (and let go when OpenSSL's secure heap runs half full).
 * sobj_lock guards the table; it is a leaf lock. */
#include "tok_internal.h"
#include "token/tok_access.h"

#include <stdlib.h>

struct tok_sobj {
    uint64_t h;
    CK_SLOT_ID slot;
    uint64_t owner;
    tok_attrs attrs;
    tok_key *key;     /* parsed on first use */
    unsigned version; /* of attrs: a key parsed from older attributes is not kept */
};

static void sobj_free(tok_sobj *o)
{
    tok_attrs_free(&o->attrs);
    tok_key_unref(o->key);
    free(o);
}

void tok_sobjs_free_all(tok_ctx *ctx)
{
    pthread_mutex_lock(&ctx->sobj_lock);
    for (size_t i = 0; i < ctx->nsobjs; i++)
        sobj_free(ctx->sobjs[i]);
    free(ctx->sobjs);
    ctx->sobjs = NULL;
    ctx->nsobjs = ctx->capsobjs = 0;
    pthread_mutex_unlock(&ctx->sobj_lock);
}

static void drop_where(tok_ctx *ctx, bool by_owner, uint64_t id)
{
    pthread_mutex_lock(&ctx->sobj_lock);
    for (size_t i = 0; i < ctx->nsobjs;) {
        tok_sobj *o = ctx->sobjs[i];

        if (by_owner ? o->owner == id : o->slot == id) {
            ctx->sobjs[i] = ctx->sobjs[--ctx->nsobjs];
            sobj_free(o);
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&ctx->sobj_lock);
}

void tok_sobjs_drop_owner(tok_ctx *ctx, uint64_t owner) { drop_where(ctx, true, owner); }
void tok_sobjs_drop_slot(tok_ctx *ctx, CK_SLOT_ID slot) { drop_where(ctx, false, slot); }

/* PKCS#11 (C_Logout): the application's private session objects are destroyed at logout. */
uint64_t tok_logout_seq(tok_ctx *ctx) { return __atomic_load_n(&ctx->logout_seq, __ATOMIC_ACQUIRE); }

void tok_sobjs_drop_private(tok_ctx *ctx, CK_SLOT_ID slot)
{
    pthread_mutex_lock(&ctx->sobj_lock);
    __atomic_add_fetch(&ctx->logout_seq, 1, __ATOMIC_ACQ_REL);
    for (size_t i = 0; i < ctx->nsobjs;) {
        tok_sobj *o = ctx->sobjs[i];

        if (o->slot == slot && tok_obj_is_private(&o->attrs)) {
            ctx->sobjs[i] = ctx->sobjs[--ctx->nsobjs];
            sobj_free(o);
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&ctx->sobj_lock);
}

static tok_sobj *find_locked(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t h)
{
    for (size_t i = 0; i < ctx->nsobjs; i++)
        if (ctx->sobjs[i]->h == h && ctx->sobjs[i]->slot == slot)
            return ctx->sobjs[i];
    return NULL;
}

CK_RV tok_sobj_add(tok_ctx *ctx, const tok_access *ac, const tok_attrs *obj, uint64_t *h)
{
    CK_RV rv = tok_access_write(ac, obj);
    tok_sobj *o;

    if (rv != CKR_OK)
        return rv;
    o = calloc(1, sizeof(*o));
    if (!o || tok_attrs_copy(&o->attrs, obj) != 0) {
        free(o);
        return CKR_HOST_MEMORY;
    }
    o->slot = ac->slot;
    o->owner = ac->owner;
    pthread_mutex_lock(&ctx->sobj_lock);
    if (tok_obj_is_private(obj) && ac->login_seq != __atomic_load_n(&ctx->logout_seq, __ATOMIC_ACQUIRE)) {
        /* The login the caller's access was decided under ended meanwhile. */
        pthread_mutex_unlock(&ctx->sobj_lock);
        sobj_free(o);
        return CKR_USER_NOT_LOGGED_IN;
    }
    if (ctx->nsobjs == ctx->capsobjs) {
        size_t cap = ctx->capsobjs ? ctx->capsobjs * 2 : 32;
        tok_sobj **v = realloc(ctx->sobjs, cap * sizeof(*v));

        if (!v) {
            pthread_mutex_unlock(&ctx->sobj_lock);
            sobj_free(o);
            return CKR_HOST_MEMORY;
        }
        ctx->sobjs = v;
        ctx->capsobjs = cap;
    }
    o->h = TOK_SOBJ_BIT | ++ctx->sobj_next;
    ctx->sobjs[ctx->nsobjs++] = o;
    *h = o->h;
    pthread_mutex_unlock(&ctx->sobj_lock);
    return CKR_OK;
}

CK_RV tok_sobj_read(tok_ctx *ctx, const tok_access *ac, uint64_t h, tok_attrs *out)
{
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;
    tok_sobj *o;

    pthread_mutex_lock(&ctx->sobj_lock);
    o = find_locked(ctx, ac->slot, h);
    if (o && tok_access_sees(ac, &o->attrs))
        rv = tok_attrs_copy(out, &o->attrs) == 0 ? CKR_OK : CKR_HOST_MEMORY;
    pthread_mutex_unlock(&ctx->sobj_lock);
    return rv;
}

CK_RV tok_sobj_key(tok_ctx *ctx, const tok_access *ac, uint64_t h, tok_key **key)
{
    tok_attrs attrs = TOK_ATTRS_INIT;
    tok_key *k = NULL;
    unsigned version;
    tok_sobj *o;
    CK_RV rv;

    pthread_mutex_lock(&ctx->sobj_lock);
    o = find_locked(ctx, ac->slot, h);
    if (!o || !tok_access_sees(ac, &o->attrs) || !tok_attrs_is_key(&o->attrs)) {
        pthread_mutex_unlock(&ctx->sobj_lock);
        return CKR_OBJECT_HANDLE_INVALID; /* none, or not a key */
    }
    if (o->key) {
        *key = tok_key_ref(o->key);
        pthread_mutex_unlock(&ctx->sobj_lock);
        return CKR_OK;
    }
    version = o->version;
    rv = tok_attrs_copy(&attrs, &o->attrs) == 0 ? CKR_OK : CKR_HOST_MEMORY;
    pthread_mutex_unlock(&ctx->sobj_lock);
    if (rv == CKR_OK)
        rv = tok_key_from_attrs(&attrs, &k); /* outside the lock: RSA keys take a while */
    tok_attrs_free(&attrs);
    if (rv != CKR_OK)
        return rv;
    pthread_mutex_lock(&ctx->sobj_lock);
    if (ks_secure_heap_pressed()) {
        /* OpenSSL's secure heap is half full: the parsed keys kept with
         * session objects go (they are parsed again on their next use), as
         * the key cache's do, so that operations keep room to run. */
        for (size_t i = 0; i < ctx->nsobjs; i++) {
            tok_key_unref(ctx->sobjs[i]->key);
            ctx->sobjs[i]->key = NULL;
        }
    } else if ((o = find_locked(ctx, ac->slot, h)) && !o->key && o->version == version) {
        o->key = tok_key_ref(k);
    }
    pthread_mutex_unlock(&ctx->sobj_lock);
    *key = k;
    return CKR_OK;
}

CK_RV tok_sobj_replace(tok_ctx *ctx, const tok_access *ac, uint64_t h, const tok_attrs *updated)
{
    tok_attrs copy = TOK_ATTRS_INIT;
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;
    tok_sobj *o;

    if (tok_attrs_copy(&copy, updated) != 0)
        return CKR_HOST_MEMORY;
    pthread_mutex_lock(&ctx->sobj_lock);
    o = find_locked(ctx, ac->slot, h);
    if (o) {
        tok_attrs_free(&o->attrs);
        o->attrs = copy;
        copy = (tok_attrs)TOK_ATTRS_INIT;
        tok_key_unref(o->key);
        o->key = NULL;
        o->version++;
        rv = CKR_OK;
    }
    pthread_mutex_unlock(&ctx->sobj_lock);
    tok_attrs_free(&copy);
    return rv;
}

CK_RV tok_sobj_destroy(tok_ctx *ctx, const tok_access *ac, uint64_t h)
{
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;

    pthread_mutex_lock(&ctx->sobj_lock);
    for (size_t i = 0; i < ctx->nsobjs; i++) {
        tok_sobj *o = ctx->sobjs[i];

        if (o->h == h && o->slot == ac->slot) {
            ctx->sobjs[i] = ctx->sobjs[--ctx->nsobjs];
            sobj_free(o);
            rv = CKR_OK;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->sobj_lock);
    return rv;
}

CK_RV tok_sobjs_find(tok_ctx *ctx, const tok_access *ac, const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t **hs,
                     size_t *count)
{
    uint64_t *v;
    size_t k = 0;

    pthread_mutex_lock(&ctx->sobj_lock);
    v = calloc(ctx->nsobjs ? ctx->nsobjs : 1, sizeof(*v));
    if (!v) {
        pthread_mutex_unlock(&ctx->sobj_lock);
        return CKR_HOST_MEMORY;
    }
    for (size_t i = 0; i < ctx->nsobjs; i++) {
        const tok_sobj *o = ctx->sobjs[i];

        if (o->slot == ac->slot && tok_access_sees(ac, &o->attrs) && tok_attrs_match(&o->attrs, tmpl, n))
            v[k++] = o->h;
    }
    pthread_mutex_unlock(&ctx->sobj_lock);
    *hs = v;
    *count = k;
    return CKR_OK;
}
