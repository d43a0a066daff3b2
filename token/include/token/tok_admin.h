/* p11mk token layer: what p11mk-admin needs of it, beyond tok_token.h.
 *
 * The admin lists and deletes tokens, shows what can be shown of objects
 * without a PIN, checks the indexes and reports why a keystore would not
 * open; it does so through these functions (the token layer knows which
 * slot is the free one, how objects are stored and sealed), and reaches the
 * keystore's own public API (keystore/ks.h) for the master-key lifecycle.
 * The module (pkcs11/) does not include this header, so it never sees the
 * keystore's types. */
#ifndef P11MK_TOK_ADMIN_H
#define P11MK_TOK_ADMIN_H

#include "keystore/ks.h"
#include "token/tok_token.h"

/* Why the last tok_ctx_open of this thread failed: the KS_* code and the
 * sentence (prefixed with what was being done) with its area (ks_err), for
 * the admin's one map from failures to exit codes. */
typedef struct {
    int rc;
    ks_err err;
} tok_open_error;
TOK_API const tok_open_error *tok_ctx_error(void);
TOK_API const ks_config *tok_ctx_config(tok_ctx *ctx);
/* Where the master key came from (source, is_default); the key bytes are not kept. */
TOK_API const ks_mkey *tok_ctx_mkey(tok_ctx *ctx);
TOK_API ks_store *tok_ctx_store(tok_ctx *ctx);

/* One initialized token (the free slot is not one): its slot, its
 * CK_TOKEN_INFO and its number of objects. */
typedef struct {
    CK_SLOT_ID slot;
    CK_TOKEN_INFO info;
    uint64_t objects;
} tok_token_row;
/* Every initialized token in slot order, the counts read in one read
 * transaction; *rows is malloc'd (caller frees). CKR_OK, CKR_HOST_MEMORY,
 * CKR_DEVICE_ERROR (the keystore cannot be read). */
TOK_API CK_RV tok_token_rows(tok_ctx *ctx, tok_token_row **rows, size_t *n);

/* Whether the token's private objects need a PIN at rest (tok_login.c):
 * TOK_BIND_FULL; TOK_BIND_NONE for a token made before PIN binding that no
 * role has logged in to since (the master key alone opens its private
 * objects); TOK_BIND_ESCROW while the token key is also kept under the
 * master-key seal, until *waiting (CKU_SO or CKU_USER) logs in once. */
typedef enum { TOK_BIND_FULL, TOK_BIND_NONE, TOK_BIND_ESCROW } tok_binding;
TOK_API CK_RV tok_token_binding(tok_ctx *ctx, CK_SLOT_ID slot, tok_binding *b, CK_USER_TYPE *waiting);

/* Check that every object of every token is found through the index by each
 * indexed attribute it has; cb(slot, oid, attribute) for each one missing.
 * Returns the number of objects checked, or -1 if the keystore cannot be read. */
typedef void (*tok_idx_cb)(CK_SLOT_ID slot, uint64_t oid, CK_ATTRIBUTE_TYPE t, void *arg);
TOK_API long long tok_verify_index(tok_ctx *ctx, tok_idx_cb cb, void *arg, unsigned long long *missing);

/* What can be shown without the PIN (p11mk-admin list): a private object's
 * class, key type, label, id, policy flags and sizes; *sealed tells that its
 * values are in an envelope only a PIN opens; *epoch (may be NULL) is the
 * master-key epoch its record is sealed under. Errors as tok_obj_read. */
TOK_API CK_RV tok_obj_read_meta(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t oid, tok_attrs *out, bool *sealed,
                                uint32_t *epoch);

/* Delete a token and its objects. With expect_inc, only if the token is still
 * that incarnation (not re-initialized since the caller looked): otherwise
 * nothing is deleted, *changed is set and CKR_FUNCTION_FAILED returned. */
TOK_API CK_RV tok_token_delete(tok_ctx *ctx, CK_SLOT_ID slot, const uint64_t *expect_inc, bool *changed);
#endif
