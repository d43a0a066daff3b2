/* p11mk pkcs11 layer: the C ABI. Owns the entry points, argument checks,
 * the session and handle tables, login state per application, locking and
 * dispatch. Entry points check arguments and session state, describe the
 * caller (tok_access) and call the token layer, which decides every PKCS#11
 * rule. May call: the token layer's public headers (token/include/token),
 * nothing of the keystore (the build keeps keystore/ks.h and LMDB out of
 * reach, pkcs11/meson.build). */
#ifndef P11MK_P11_INTERNAL_H
#define P11MK_P11_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "p11_v3.h"
#include "token/tok_access.h"
#include "token/tok_aead.h"
#include "token/tok_msgmac.h"
#include "token/tok_attr.h"
#include "token/tok_mech.h"
#include "token/tok_policy.h"
#include "token/tok_token.h"

#define P11_API __attribute__((visibility("hidden")))
#define P11_EXPORT __attribute__((visibility("default")))

/* p11-kit style guards at the API edge. */
#define return_val_if_fail(expr, val) \
    do {                              \
        if (!(expr))                  \
            return (val);             \
    } while (0)

/* ---- locking ------------------------------------------------------------ */
typedef struct p11_mutex p11_mutex;
P11_API CK_RV p11_locking_setup(const CK_C_INITIALIZE_ARGS *args);
P11_API CK_RV p11_mutex_new(p11_mutex **m);
P11_API void p11_mutex_free(p11_mutex *m);
P11_API void p11_mutex_lock(p11_mutex *m);
P11_API void p11_mutex_unlock(p11_mutex *m);

/* ---- sessions ------------------------------------------------------------ */
#define P11_OP_SLOTS 6 /* indexed by tok_op_kind (1..5) */

/* Session object handles have the top bit set; token object handles are
 * keystore object ids (stable across processes and rotations). */
#define P11_SOBJ_BIT ((CK_OBJECT_HANDLE)TOK_SOBJ_BIT)

typedef struct p11_find {
    bool active;
    CK_ATTRIBUTE *tmpl; /* deep copy */
    CK_ULONG n;
    CK_OBJECT_HANDLE *sobjs; /* session objects matched at init */
    size_t nsobjs, sobj_pos;
    uint64_t *cands; /* token object candidates, checked lazily */
    size_t ncands, cand_pos;
} p11_find;

typedef struct p11_session {
    CK_SESSION_HANDLE h; /* set at open (global lock), read atomically by lookups */
    CK_SLOT_ID slot;
    CK_FLAGS flags;
    bool closed;  /* atomic: set at close, cleared at open after h (global lock; p11_session.c) */
    uint32_t idx; /* its place in the table, for good */
    uint64_t gen; /* uses of the place: the handle's high bits */
    p11_mutex *busy; /* serializes operations on this session */
    tok_op *op[P11_OP_SLOTS];
    tok_op *spare[P11_OP_SLOTS]; /* the last ended operation of each kind, for the next (tok_op_end) */
    bool op_multi[P11_OP_SLOTS];  /* an update() was made */
    bool op_single[P11_OP_SLOTS]; /* a single-part call left the operation active (a size query) */
    bool op_reauth[P11_OP_SLOTS]; /* CKA_ALWAYS_AUTHENTICATE key: C_Login(CKU_CONTEXT_SPECIFIC) still due */
    tok_msg *msg[2];              /* message-based encryption and decryption (p11_message.c) */
    tok_msgmac *mac[2];           /* message-based signing and verification */
    p11_find find;
} p11_session;

/* ---- module state (p11_state.c) ----------------------------------------- */
P11_API bool p11_initialized(void); /* in this process (not a fork child) */
/* For C_Initialize / C_Finalize only (under their mutex): */
P11_API bool p11_state_published(void);   /* initialized, in this process or its parent */
P11_API bool p11_state_forked(void);      /* initialized in the parent of this process */
P11_API bool p11_state_fork_child(void);  /* a fork child not initialized since */
P11_API void p11_state_publish(tok_ctx *tok, p11_mutex *lock);
/* C_Finalize's first step: calls that start from now on find the library
 * not initialized; p11_gate_drain then waits for those already in. */
P11_API void p11_state_unpublish(void);
P11_API void p11_state_clear(tok_ctx **tok, p11_mutex **lock); /* hands them back */
/* A fork child keeps what it inherited but must not free (the parent's
 * context, locks), referenced for the rest of the process. */
P11_API void p11_state_abandon(void *p);
/* The fork gate (p11_state.c): held shared by a call while it works in the
 * module (every function of the lists, by its wrapper in p11_entry.c;
 * C_Initialize and C_Finalize take it themselves, C_WaitForSlotEvent for
 * each look), taken exclusively by fork(). Never twice in a call.
 * p11_gate_setup makes it (idempotent; C_Initialize calls it first). */
/* Inside the gate a thread cannot be cancelled (pthread_cancel): a call that
 * reached a cancellation point (LMDB's write and fdatasync, a PIN attempt's
 * wait, OpenSSL's getrandom) unwound out of the module holding its session's
 * lock and its count in the gate. The cancellation acts at the caller's next
 * cancellation point after the call (tests/races/cancel_in_call). */
typedef struct {
    struct gate_rec *rec; /* what the call was counted in */
    int cancel;           /* the thread's cancelability state before it */
} p11_gate;               /* p11_gate_leave's argument */
P11_API void p11_gate_setup(void);
P11_API p11_gate p11_gate_enter(void);
/* The gate if no fork is under way; false (not entered) if one is: for a
 * caller that must not wait behind a fork (C_WaitForSlotEvent's look, which
 * C_Finalize, inside the gate, may be waiting for). */
P11_API bool p11_gate_try_enter(p11_gate *g);
P11_API void p11_gate_leave(p11_gate g);
/* C_Finalize (inside the gate as self, holding init_lock, after
 * p11_state_unpublish): returns once every other thread's call in the
 * module has returned. */
P11_API void p11_gate_drain(p11_gate self);
P11_API tok_ctx *p11_tok(void);
/* C_WaitForSlotEvent's state (p11_event.c): started by C_Initialize with its
 * context (before it is published), stopped by C_Finalize before the context
 * goes (it ends every wait), forgotten in a fork child. */
P11_API CK_RV p11_events_start(tok_ctx *tok);
P11_API void p11_events_stop(void);
P11_API void p11_events_forget(void);
P11_API void p11_lock(void);
P11_API void p11_unlock(void);

/* Find the session and take its busy lock (p11_session_put leaves it). */
P11_API CK_RV p11_session_get(CK_SESSION_HANDLE h, p11_session **s);
P11_API void p11_session_put(p11_session *s);
P11_API CK_STATE p11_session_state(const p11_session *s);
/* The login state of a slot: (CK_USER_TYPE)-1 when nobody is logged in. */
#define P11_NOBODY TOK_NOBODY
P11_API CK_USER_TYPE p11_login_state(CK_SLOT_ID slot);
/* The session as the token layer's access rules see it. */
P11_API tok_access p11_access(const p11_session *s);
P11_API void p11_sessions_init(void);
P11_API void p11_sessions_free(bool orphaned);
P11_API CK_ULONG p11_session_count(CK_SLOT_ID slot, bool rw_only);
/* A slot the module has, its token initialized or not (CKR_OK), else
 * CKR_SLOT_ID_INVALID or the keystore's error: for the functions whose lists
 * have no CKR_TOKEN_NOT_RECOGNIZED (C_GetMechanismList, C_GetMechanismInfo,
 * C_CloseAllSessions). */
static inline CK_RV p11_slot_known(CK_SLOT_ID slot)
{
    CK_RV rv = tok_slot_check(p11_tok(), slot);

    return rv == CKR_TOKEN_NOT_RECOGNIZED ? CKR_OK : rv;
}
P11_API void p11_op_end(p11_session *s, tok_op_kind kind);

/* ---- PKCS#11 3.0 message-based functions (p11_message.c) ------------------- */
/* End a session's message-based operation of one kind. */
enum { P11_MSG_ENCRYPT, P11_MSG_DECRYPT, P11_MSG_SIGN, P11_MSG_VERIFY, P11_MSG_KINDS };
P11_API void p11_msg_end(p11_session *s, int kind);
CK_RV C_MessageEncryptInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
CK_RV C_EncryptMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
                       CK_BYTE_PTR, CK_ULONG_PTR);
CK_RV C_EncryptMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
CK_RV C_EncryptMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR,
                           CK_FLAGS);
CK_RV C_MessageEncryptFinal(CK_SESSION_HANDLE);
CK_RV C_MessageDecryptInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
CK_RV C_DecryptMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG,
                       CK_BYTE_PTR, CK_ULONG_PTR);
CK_RV C_DecryptMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
CK_RV C_DecryptMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR,
                           CK_FLAGS);
CK_RV C_MessageDecryptFinal(CK_SESSION_HANDLE);
CK_RV C_MessageSignInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
CK_RV C_SignMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
CK_RV C_SignMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
CK_RV C_SignMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
CK_RV C_MessageSignFinal(CK_SESSION_HANDLE);
CK_RV C_MessageVerifyInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
CK_RV C_VerifyMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
CK_RV C_VerifyMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
CK_RV C_VerifyMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
CK_RV C_MessageVerifyFinal(CK_SESSION_HANDLE);

/* ---- objects ------------------------------------------------------------- */
/* A copy of an object's attributes, if it exists and this session may see it
 * (tok_obj_read): CKR_OBJECT_HANDLE_INVALID else. */
P11_API CK_RV p11_object_attrs(p11_session *s, CK_OBJECT_HANDLE h, tok_attrs *out);
/* Key and attributes for an operation; handle errors mapped to CKR_KEY_HANDLE_INVALID. */
P11_API CK_RV p11_object_key(p11_session *s, CK_OBJECT_HANDLE h, tok_key **key);
P11_API void p11_find_end(p11_find *f);

static inline void p11_attrs_cleanup(tok_attrs *a) { tok_attrs_free(a); }
#define P11_AUTO_ATTRS __attribute__((cleanup(p11_attrs_cleanup))) tok_attrs

#endif
