/* p11mk token layer: tokens (slots), PINs, token objects in the keystore and
 * the in-memory key cache. Knows PKCS#11 semantics, not sessions or handles
 * (those live in pkcs11/). */
#ifndef P11MK_TOK_TOKEN_H
#define P11MK_TOK_TOKEN_H

#include "token/tok_access.h"
#include "token/tok_attr.h"
#include "token/tok_mech.h"

typedef struct tok_ctx tok_ctx;

/* Load configuration, set up logging, load the master key and open (or
 * create) the keystore. Every failure is logged with the reason and what
 * to do (tok_admin.h: tok_ctx_error says which); returns CKR_GENERAL_ERROR
 * (config/keystore) or CKR_HOST_MEMORY. */
enum {
    TOK_CTX_CREATE = 1u << 0, /* create the keystore if missing (the module does) */
    TOK_CTX_STDERR = 1u << 1, /* log to stderr unless the config names a log */
    TOK_CTX_NO_THREADS = 1u << 2, /* CKF_LIBRARY_CANT_CREATE_OS_THREADS: start no thread */
};
TOK_API CK_RV tok_ctx_open(unsigned flags, tok_ctx **out);
/* The process-wide set-up the layers below need (their fork handlers),
 * for the pkcs11 layer to call before it registers its fork gate's: outside
 * the gate (a libc that holds its fork-handler lock while prepare handlers
 * run, glibc before 2.34 or musl, would make a pthread_atfork inside the
 * gate wait for a fork that waits for the gate), and first (prepare
 * handlers run in the reverse order: the keystore's, which wait for its
 * listener threads, run once the gate is shut). Idempotent. */
TOK_API void tok_process_setup(void);
TOK_API void tok_ctx_close(tok_ctx *ctx);
/* The keystore cannot be written: tokens are write-protected. */
TOK_API bool tok_ctx_readonly(tok_ctx *ctx);

/* ---- slots and tokens ---------------------------------------------------- */
/* Slot ids are token ids; the free slot (for C_InitToken) has the id the
 * next token will get and is listed last. */
TOK_API CK_RV tok_slot_list(tok_ctx *ctx, CK_SLOT_ID **ids, CK_ULONG *n);
/* CKR_OK if slot names an initialized token, CKR_TOKEN_NOT_RECOGNIZED for the
 * free slot, CKR_SLOT_ID_INVALID otherwise. */
TOK_API CK_RV tok_slot_check(tok_ctx *ctx, CK_SLOT_ID slot);
TOK_API CK_RV tok_slot_info(tok_ctx *ctx, CK_SLOT_ID slot, CK_SLOT_INFO *info);
/* Slot events (C_WaitForSlotEvent, tok_event.c): a watch remembers the
 * slots' states (a token and its incarnation, or none) as it last reported
 * them, from when it was made. _next looks once (one read transaction):
 * CKR_OK and *slot, the lowest slot whose token was since initialized,
 * re-initialized or deleted, by any process (each change reported once), or
 * CKR_NO_EVENT; CKR_FUNCTION_FAILED or CKR_HOST_MEMORY when the keystore
 * cannot be read. Not thread-safe: one caller at a time per watch. */
typedef struct tok_slot_watch tok_slot_watch;
TOK_API CK_RV tok_slot_watch_new(tok_ctx *ctx, tok_slot_watch **w);
TOK_API void tok_slot_watch_free(tok_slot_watch *w);
TOK_API CK_RV tok_slot_watch_next(tok_ctx *ctx, tok_slot_watch *w, CK_SLOT_ID *slot);
TOK_API CK_RV tok_token_info(tok_ctx *ctx, CK_SLOT_ID slot, CK_TOKEN_INFO *info);

/* C_InitToken: on the free slot creates the token; on a token verifies the
 * SO PIN (lock-out counted) and wipes its objects. label: 32 bytes, blank padded. */
TOK_API CK_RV tok_token_init(tok_ctx *ctx, CK_SLOT_ID slot, const uint8_t *so_pin, CK_ULONG len,
                             const uint8_t label[32]);
/* The token's incarnation: it changes when the token is re-initialized or
 * deleted, by any process. A login remembers it and ends when it changes. */
TOK_API CK_RV tok_token_incarnation(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t *inc);
/* The same, and the tok_change_seq reading it is current at (the snapshot's,
 * see ks_txn_seq; 0: unknown). */
TOK_API CK_RV tok_token_incarnation_at(tok_ctx *ctx, CK_SLOT_ID slot, uint64_t *inc, uint64_t *seq);
/* Changes whenever anything commits to the keystore, from any process; no
 * transaction (ks_commit_seq). Equal readings: whatever was read after the
 * first still holds, such as an incarnation. 0: unknown, read again. */
TOK_API uint64_t tok_change_seq(tok_ctx *ctx);
/* C_InitPIN (the caller checked the SO is logged in). */
TOK_API CK_RV tok_pin_init(tok_ctx *ctx, CK_SLOT_ID slot, const uint8_t *pin, CK_ULONG len);
/* C_SetPIN for CKU_SO or CKU_USER: verifies old (counted), sets new. */
TOK_API CK_RV tok_pin_set(tok_ctx *ctx, CK_SLOT_ID slot, CK_USER_TYPE who, const uint8_t *old,
                          CK_ULONG oldlen, const uint8_t *pin, CK_ULONG len);
/* C_Login PIN check, counted first (tok_login.c says how): CKR_OK (this
 * process now holds the token key: private objects can be read and made),
 * CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_USER_PIN_NOT_INITIALIZED,
 * CKR_ARGUMENTS_BAD (pin NULL) and CKR_PIN_LEN_RANGE (no try spent by
 * either), CKR_SLOT_ID_INVALID, CKR_DEVICE_ERROR (a record was altered),
 * CKR_DEVICE_MEMORY, CKR_FUNCTION_FAILED (another attempt held the token
 * for 60 s). */
TOK_API CK_RV tok_login_check(tok_ctx *ctx, CK_SLOT_ID slot, CK_USER_TYPE who, const uint8_t *pin,
                              CK_ULONG len);


/* The application logged out of the token (C_Logout, its last session
 * closed, the token re-initialized): the token key this process held for it
 * and the cached keys of its private objects are cleansed, and its private
 * session objects destroyed (PKCS#11 C_Logout). */
TOK_API void tok_logout(tok_ctx *ctx, CK_SLOT_ID slot);
/* Counts logouts: read it before deciding who is logged in (tok_access.login_seq),
 * so that a private session object made across a logout is refused. */
TOK_API uint64_t tok_logout_seq(tok_ctx *ctx);

/* ---- objects ------------------------------------------------------------- */
/* One object model for token objects (in the keystore; the handle is the
 * keystore object id) and session objects (in this process's memory; the
 * handle has TOK_SOBJ_BIT; tok_sobj.c), each function taking the caller's
 * access (tok_access.h): a private object exists only for a logged-in user
 * (CKR_OBJECT_HANDLE_INVALID otherwise, decided before a token object's
 * envelope is opened), and writes follow tok_access_write
 * (CKR_SESSION_READ_ONLY, CKR_USER_NOT_LOGGED_IN). */
#define TOK_SOBJ_BIT ((uint64_t)1 << (sizeof(CK_OBJECT_HANDLE) * 8 - 1))

/* A new object, a token or session object per its CKA_TOKEN (session
 * objects belong to ac->owner); *h its handle. */
TOK_API CK_RV tok_obj_store(tok_ctx *ctx, const tok_access *ac, const tok_attrs *obj, uint64_t *h);

/* ---- making objects (tok_create.c: one recipe for all six) -----------------
 * Each returns the codes of the attribute policy (CKR_TEMPLATE_INCOMPLETE,
 * CKR_TEMPLATE_INCONSISTENT, CKR_ATTRIBUTE_TYPE_INVALID,
 * CKR_ATTRIBUTE_VALUE_INVALID, CKR_ATTRIBUTE_READ_ONLY), of the write rule
 * (CKR_SESSION_READ_ONLY, CKR_USER_NOT_LOGGED_IN), of the mechanism
 * (CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID, CKR_KEY_SIZE_RANGE,
 * ...), of storage (CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY), and those below. */
/* C_CreateObject. */
TOK_API CK_RV tok_obj_create(tok_ctx *ctx, const tok_access *ac, const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t *h);
/* C_CopyObject: CKR_OBJECT_HANDLE_INVALID, CKR_ACTION_PROHIBITED (not copyable). */
TOK_API CK_RV tok_obj_copy(tok_ctx *ctx, const tok_access *ac, uint64_t src, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                           uint64_t *h);
/* C_GenerateKey and C_GenerateKeyPair (mech not NULL). */
TOK_API CK_RV tok_key_generate(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, const CK_ATTRIBUTE *tmpl,
                               CK_ULONG n, uint64_t *h);
TOK_API CK_RV tok_keypair_generate(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech,
                                   const CK_ATTRIBUTE *pub_tmpl, CK_ULONG npub, const CK_ATTRIBUTE *priv_tmpl,
                                   CK_ULONG npriv, uint64_t *hpub, uint64_t *hpriv);
/* C_UnwrapKey: CKR_UNWRAPPING_KEY_HANDLE_INVALID, CKR_KEY_FUNCTION_NOT_PERMITTED,
 * CKR_WRAPPED_KEY_INVALID, CKR_WRAPPED_KEY_LEN_RANGE. */
TOK_API CK_RV tok_key_unwrap(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, uint64_t unwrapping,
                             const uint8_t *wrapped, CK_ULONG len, const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t *h);
/* C_DeriveKey: CKR_KEY_HANDLE_INVALID, CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_TYPE_INCONSISTENT. */
TOK_API CK_RV tok_key_derive(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, uint64_t base,
                             const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t *h);
/* C_WrapKey (out NULL: size query): CKR_WRAPPING_KEY_HANDLE_INVALID,
 * CKR_KEY_HANDLE_INVALID, CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_NOT_WRAPPABLE,
 * CKR_KEY_UNEXTRACTABLE, CKR_WRAPPING_KEY_TYPE_INCONSISTENT, CKR_BUFFER_TOO_SMALL. */
TOK_API CK_RV tok_key_wrap(tok_ctx *ctx, const tok_access *ac, const CK_MECHANISM *mech, uint64_t wrapping,
                           uint64_t target, uint8_t *out, CK_ULONG *outlen);
/* CKR_OBJECT_HANDLE_INVALID when absent, and for a private object whose
 * envelope this process cannot open (no login); CKR_DEVICE_ERROR (and a log
 * line naming the object) when the record or its envelope fails
 * authentication. */
TOK_API CK_RV tok_obj_read(tok_ctx *ctx, const tok_access *ac, uint64_t h, tok_attrs *out);
/* C_FindObjects' test of one candidate: CKR_OK with *match (false for an
 * object deleted meanwhile, one the caller may not see, or a damaged one,
 * which is logged: the search goes on); CKR_DEVICE_ERROR when the storage
 * failed (the answer is unknown: the search stops there, and may be called
 * again), CKR_HOST_MEMORY. */
TOK_API CK_RV tok_obj_match(tok_ctx *ctx, const tok_access *ac, uint64_t h, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                            bool *match);
TOK_API CK_RV tok_obj_replace(tok_ctx *ctx, const tok_access *ac, uint64_t h, const tok_attrs *old,
                              const tok_attrs *updated);
/* C_SetAttributeValue: read, the write rule, the attribute policy
 * (tok_policy_set's codes), then the change. */
TOK_API CK_RV tok_obj_set(tok_ctx *ctx, const tok_access *ac, uint64_t h, const CK_ATTRIBUTE *tmpl, CK_ULONG n);
/* C_DestroyObject: read, the write rule, CKA_DESTROYABLE (CKR_ACTION_PROHIBITED). */
TOK_API CK_RV tok_obj_destroy(tok_ctx *ctx, const tok_access *ac, uint64_t h);
/* A key object's parsed key (a reference: tok_key_unref), from the key
 * cache when the stored record has not changed since it was cached (stamp
 * compare, no unsealing), else unsealed and parsed. Its attributes, for the
 * usage and policy checks, are tok_key_attrs(*key) (no key material, no
 * copy). CKR_OBJECT_HANDLE_INVALID when ac may not see it or it is not a
 * key (a data object, a certificate). */
TOK_API CK_RV tok_obj_key(tok_ctx *ctx, const tok_access *ac, uint64_t h, tok_key **key);
/* C_EncryptInit, C_DecryptInit, C_SignInit, C_VerifyInit, C_DigestInit and
 * the recovering inits (recover) as the pkcs11 layer makes them: the key of
 * handle h as tok_obj_key finds it for ac (h unused for TOK_OP_DIGEST), then
 * the checks and set-up of tok_op_init / tok_op_init_recover, in that order.
 * *spare is the session's spare operation of this kind (tok_op_end) or NULL:
 * the new operation starts from it where it can (tok_op.c says what is
 * kept) and it is set to NULL, except after CKR_KEY_HANDLE_INVALID, which
 * leaves it. Codes: those of tok_op_init, CKR_KEY_HANDLE_INVALID (no key
 * ac may see), CKR_DEVICE_ERROR and CKR_HOST_MEMORY (the lookup). */
TOK_API CK_RV tok_op_start(tok_ctx *ctx, const tok_access *ac, tok_op_kind kind, bool recover,
                           const CK_MECHANISM *mech, uint64_t h, tok_op **spare, tok_op **out);
/* End an operation: kept as *spare (the previous spare freed) when it can
 * serve the session's next one of its kind, else freed. spare NULL: freed. */
TOK_API void tok_op_end(tok_op *op, tok_op **spare);
/* Whether the operation's key wants its PIN for every use
 * (CKA_ALWAYS_AUTHENTICATE). */
TOK_API bool tok_op_always_authenticate(const tok_op *op);
/* Whether op (a spare) holds a private object's key: what a logout takes. */
TOK_API bool tok_op_spare_private(const tok_op *op);

/* The session objects ac may see that match a template, all at once. */
TOK_API CK_RV tok_sobjs_find(tok_ctx *ctx, const tok_access *ac, const CK_ATTRIBUTE *tmpl, CK_ULONG n, uint64_t **hs,
                             size_t *count);
/* A session closed (its session objects go), or a token's last session (all of that token's). */
TOK_API void tok_sobjs_drop_owner(tok_ctx *ctx, uint64_t owner);
TOK_API void tok_sobjs_drop_slot(tok_ctx *ctx, CK_SLOT_ID slot);

/* Candidate object ids for a find template: from an index when the template
 * has CKA_ID, CKA_LABEL or CKA_CLASS (the most selective first), otherwise
 * every object id of the token (keys only; nothing unsealed). Candidates
 * must still be matched (tok_obj_read + tok_attrs_match). */
TOK_API CK_RV tok_obj_candidates(tok_ctx *ctx, CK_SLOT_ID slot, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                                 uint64_t **oids, size_t *count);

/* Drop cached unsealed keys (all, or those of one token). */
TOK_API void tok_cache_flush(tok_ctx *ctx);

#endif
