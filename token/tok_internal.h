/* p11mk token layer, internal: the context and the token record shared by
 * tok_token.c (tokens, objects, key cache) and tok_login.c (PINs).
 *
 * The token layer owns every PKCS#11 rule: objects (token and session),
 * attributes and their policy, who may see and write, wrapping rules, PINs,
 * mechanisms, operations and the key cache. Its public headers are in
 * token/include/token; this one and tok_crypto.h, tok_pin.h, tok_envelope.h
 * are reachable only from this folder (and the tests). May call: the
 * keystore's public header (keystore/ks.h), OpenSSL. */
#ifndef P11MK_TOK_INTERNAL_H
#define P11MK_TOK_INTERNAL_H

#include "token/tok_admin.h"
#include "token/tok_token.h"

#include <pthread.h>

/* Token record fields, stored as a tok_attrs blob (vendor-defined types). */
#define TOKR_LABEL      (CKA_VENDOR_DEFINED + 0x7101UL)
#define TOKR_SO_PIN     (CKA_VENDOR_DEFINED + 0x7102UL)
#define TOKR_USER_PIN   (CKA_VENDOR_DEFINED + 0x7103UL)
#define TOKR_SO_FAILS   (CKA_VENDOR_DEFINED + 0x7104UL)
#define TOKR_USER_FAILS (CKA_VENDOR_DEFINED + 0x7105UL)
/* The token key's check value: present once the PINs wrap a token key (the
 * token is "PIN-bound": its private objects are enveloped). */
#define TOKR_TK_KCV     (CKA_VENDOR_DEFINED + 0x7106UL)
/* Upgrade of a token made before PIN binding: the token key, kept under the
 * master-key seal only until the role whose PIN record predates the binding
 * logs in once and wraps it (then this field goes). */
#define TOKR_TK_ESCROW  (CKA_VENDOR_DEFINED + 0x7107UL)

/* Failed logins before a PIN locks (the SO can re-set a locked user PIN). */
#define TOK_MAX_PIN_TRIES 10UL

#define TOK_OPSTATE_KEY_LEN 32u

#define CACHE_BUCKETS 1024u
#define CACHE_MAX 8192u

typedef struct cache_ent {
    struct cache_ent *next;
    CK_SLOT_ID slot;
    uint64_t oid;
    ks_stamp stamp;
    uint64_t seq; /* ks_txn_seq() of the snapshot the stamp was last found current in */
    tok_key *key; /* with its attributes (tok_key_attrs) */
} cache_ent;

struct tok_ctx {
    ks_config cfg;
    ks_mkey mk;
    ks_store *st;
    uint8_t ksid[16];
    pthread_mutex_t cache_lock;
    cache_ent *cache[CACHE_BUCKETS];
    size_t cache_n;
    uint32_t cache_epoch;
    /* Token keys of the tokens this process is logged in to (C_Login
     * unwrapped them), each in memory kept out of core dumps; tk_lock. */
    pthread_mutex_t tk_lock;
    struct tok_tk {
        CK_SLOT_ID slot;
        uint64_t inc;  /* the token's incarnation the key belongs to */
        uint8_t *key;  /* TOK_TK_LEN bytes, ks_secmem */
    } *tks;
    size_t ntks;
    /* Session objects (tok_sobj.c); sobj_lock. */
    pthread_mutex_t sobj_lock;
    struct tok_sobj **sobjs;
    size_t nsobjs, capsobjs;
    uint64_t sobj_next;
    uint64_t logout_seq; /* bumped (atomically, under sobj_lock) by every logout */
    /* Seals the states C_GetOperationState hands out (tok_opstate.c): random,
     * made when the context opens, in memory kept out of core dumps. */
    uint8_t *opstate_key;
};

static inline void txn_end(ks_txn **t)
{
    if (*t)
        ks_read_end(*t);
}
#define AUTO_TXN ks_txn *__attribute__((cleanup(txn_end)))

static inline void attrs_cleanup(tok_attrs *a) { tok_attrs_free(a); }
#define AUTO_ATTRS __attribute__((cleanup(attrs_cleanup))) tok_attrs

static inline CK_RV ks_to_ckr(int err)
{
    switch (err) {
    case KS_OK: return CKR_OK;
    case KS_ENOTFOUND: return CKR_OBJECT_HANDLE_INVALID;
    case KS_ENOMEM: return CKR_HOST_MEMORY;
    case KS_ECORRUPT:
    case KS_ENOKEY:
    case KS_EIO: /* the storage failed (a file, or a database connection lost) */
    case KS_EWRONGKEY: return CKR_DEVICE_ERROR;
    case KS_EROFS: return CKR_TOKEN_WRITE_PROTECTED;
    case KS_ENOSPC: return CKR_DEVICE_MEMORY; /* the token's storage is full */
    default: return CKR_GENERAL_ERROR;
    }
}

/* Whether an object is a key (secret, public or private): what a key handle
 * must name. PKCS#11 (CKR_KEY_HANDLE_INVALID): a handle of an object that is
 * not a key is not a valid key handle, so tok_obj_key answers such a handle
 * with CKR_OBJECT_HANDLE_INVALID and each function gives its own handle code. */
static inline bool tok_attrs_is_key(const tok_attrs *a)
{
    CK_ULONG cls;

    return tok_attrs_get_ulong(a, CKA_CLASS, &cls) &&
           (cls == CKO_SECRET_KEY || cls == CKO_PUBLIC_KEY || cls == CKO_PRIVATE_KEY);
}

/* The token record of slot (CKR_SLOT_ID_INVALID when there is none). */
TOK_API CK_RV tok_token_load(tok_ctx *ctx, CK_SLOT_ID slot, tok_attrs *rec);
TOK_API int tok_token_put(ks_txn *txn, uint32_t id, const tok_attrs *rec);
/* A copy of the token key of slot for the token's incarnation inc (the
 * caller cleanses it). False when this process holds none. */
TOK_API bool tok_tk_get(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t inc, uint8_t tk[32]);
/* Drop the cached keys of the token's private objects (at logout). */
TOK_API void tok_cache_drop_private(tok_ctx *ctx, CK_SLOT_ID slot);
/* Keep tk as the key of slot's incarnation inc (a copy; replaces any other). */
TOK_API void tok_tk_install(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t inc, const uint8_t tk[32]);
/* Cleanse the key of one token, or all (tok_ctx_close). */
TOK_API void tok_tk_drop(tok_ctx *ctx, CK_SLOT_ID slot);
TOK_API void tok_tk_drop_all(tok_ctx *ctx);
/* Session objects (tok_sobj.c): the tok_obj_* functions of tok_token.c
 * hand handles with TOK_SOBJ_BIT here. */
typedef struct tok_sobj tok_sobj;
TOK_API CK_RV tok_sobj_add(tok_ctx *ctx, const tok_access *ac, const tok_attrs *obj, uint64_t *h);
TOK_API CK_RV tok_sobj_read(tok_ctx *ctx, const tok_access *ac, uint64_t h, tok_attrs *out);
TOK_API CK_RV tok_sobj_key(tok_ctx *ctx, const tok_access *ac, uint64_t h, tok_key **key);
TOK_API CK_RV tok_sobj_replace(tok_ctx *ctx, const tok_access *ac, uint64_t h, const tok_attrs *updated);
TOK_API CK_RV tok_sobj_destroy(tok_ctx *ctx, const tok_access *ac, uint64_t h);
TOK_API void tok_sobjs_free_all(tok_ctx *ctx);
TOK_API void tok_sobjs_drop_private(tok_ctx *ctx, CK_SLOT_ID slot);

/* Where a key was found current (tok_obj_key_at): the commit sequence of
 * the reading that vouched for it and the keystore's epoch then. While the
 * keystore's commit sequence is still that number (and the epoch the same),
 * nothing was committed since, so the handle still names that very key:
 * tok_key_at_current. seq 0 (a session object, or a sequence the backend
 * cannot vouch for): never current, look the key up again. */
typedef struct tok_key_at {
    uint64_t seq;
    uint32_t epoch;
} tok_key_at;
TOK_API CK_RV tok_obj_key_at(tok_ctx *ctx, const tok_access *ac, uint64_t h, tok_key **key, tok_key_at *at);
/* seq: the commit sequence the caller read at the start of this call, or 0
 * to read it here. */
TOK_API bool tok_key_at_current(tok_ctx *ctx, const tok_key_at *at, uint64_t seq);

/* A growing list of object ids; tok_oid_push is a ks_oid_cb appending to one. */
typedef struct {
    uint64_t *v;
    size_t n, cap;
} tok_oid_vec;
TOK_API int tok_oid_push(uint64_t oid, void *arg);
/* Whether slot is the free slot (the next token's): CKR_OK, CKR_SLOT_ID_INVALID
 * when it is not, or why the slot list could not be read (CKR_DEVICE_ERROR). */
TOK_API CK_RV tok_is_free_slot(tok_ctx *ctx, CK_SLOT_ID slot);

/* Take back an object this caller has just made (the second half of a key
 * pair could not be stored): no write rule or CKA_DESTROYABLE stands in the way. */
TOK_API CK_RV tok_obj_unmake(tok_ctx *ctx, const tok_access *ac, uint64_t oid);

#endif
