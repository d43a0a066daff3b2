/* p11mk token layer: who may see, write and use which object.
 *
 * Every rule of PKCS#11 about access lives here, stated once over one
 * description of the caller (tok_access: the token, whether the session may
 * write, who is logged in). pkcs11/ builds that description from a session
 * and asks; it decides nothing itself. Usage of a key by an operation
 * (CKA_SIGN, CKA_ENCRYPT, ...) is checked where the operation starts
 * (tok_op.c); key management (wrap, unwrap, derive) here.
 *
 * wrap_policy = strict (configuration) closes the key-extraction attacks of
 * the literature (Clulow 2003; Bortolozzo, Centenaro, Focardi, Steel 2010):
 * only a key made on the token that never left it may wrap or unwrap, no
 * key both wraps and encrypts (tok_policy.c), and an unwrapped key is
 * sensitive. The default keeps pkcs11-tool's default key usages. */
#ifndef P11MK_TOK_ACCESS_H
#define P11MK_TOK_ACCESS_H

#include "token/tok_attr.h"
#include "token/tok_policy.h"

/* Nobody logged in. */
#define TOK_NOBODY ((CK_USER_TYPE)-1)

typedef struct {
    CK_SLOT_ID slot;
    bool rw;          /* a read-write session */
    CK_USER_TYPE who; /* CKU_USER, CKU_SO or TOK_NOBODY */
    uint64_t owner;   /* the session: session objects it makes go with it */
    uint64_t login_seq; /* tok_logout_seq() read before `who`: a logout since voids it */
    uint64_t seq;       /* the keystore's commit sequence (tok_change_seq) read before `who`,
                           when the call read it anyway; 0: not read */
} tok_access;

/* A private object exists only for a logged-in user. */
TOK_API bool tok_access_sees(const tok_access *ac, const tok_attrs *obj);
/* The same, given whether the object is private (a cached key's
 * tok_key_use.private_obj, read from its CKA_PRIVATE). */
TOK_API bool tok_access_sees_private(const tok_access *ac, bool private_obj);
/* Creating, changing or destroying obj: CKR_OK, CKR_SESSION_READ_ONLY (a
 * token object from a read-only session), CKR_USER_NOT_LOGGED_IN (a private
 * object without the user logged in). */
TOK_API CK_RV tok_access_write(const tok_access *ac, const tok_attrs *obj);

/* C_WrapKey: may the key `wrapping` wrap `target`? CKR_OK,
 * CKR_KEY_FUNCTION_NOT_PERMITTED (no CKA_WRAP), CKR_KEY_UNEXTRACTABLE,
 * CKR_KEY_NOT_WRAPPABLE (CKA_WRAP_WITH_TRUSTED and an untrusted wrapping key,
 * or outside the wrapping key's CKA_WRAP_TEMPLATE), CKR_HOST_MEMORY. With
 * target NULL, only whether `wrapping` may wrap at all. */
TOK_API CK_RV tok_wrap_permitted(const tok_attrs *wrapping, const tok_attrs *target);
/* C_UnwrapKey / C_DeriveKey: the key may do it (CKA_UNWRAP / CKA_DERIVE, else
 * CKR_KEY_FUNCTION_NOT_PERMITTED), and the object to make is the caller's
 * template joined with the key's CKA_UNWRAP_TEMPLATE / CKA_DERIVE_TEMPLATE (a
 * conflict is CKR_TEMPLATE_INCONSISTENT), built by the policy (its codes).
 * Derived keys are secret keys; with CKM_SHA*_KEY_DERIVATION a template
 * naming no key type makes a generic secret. */
TOK_API CK_RV tok_unwrap_template(const tok_attrs *unwrapping, const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *obj);
TOK_API CK_RV tok_derive_template(const tok_attrs *base, CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                                  tok_attrs *obj);

#endif
