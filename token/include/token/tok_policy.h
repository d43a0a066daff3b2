/* p11mk token layer: object templates and attribute policy (PKCS#11 v2.40
 * section 4 rules): what may be created, defaults, read-only attributes,
 * sensitivity, and C_GetAttributeValue/C_SetAttributeValue/C_CopyObject
 * semantics. Pure functions over tok_attrs: no storage, no sessions. */
#ifndef P11MK_TOK_POLICY_H
#define P11MK_TOK_POLICY_H

#include "token/tok_attr.h"

/* Why an object is being built (some attributes may only be set by the
 * token, e.g. CKA_LOCAL, CKA_ALWAYS_SENSITIVE, CKA_KEY_GEN_MECHANISM). */
typedef enum {
    TOK_BUILD_CREATE,   /* C_CreateObject: key material comes from the template */
    TOK_BUILD_GENERATE, /* C_GenerateKey / C_GenerateKeyPair: material added later by tok_mech */
    TOK_BUILD_UNWRAP,
    TOK_BUILD_DERIVE,
} tok_build_mode;

/* Validate a caller template and produce the full attribute set with every
 * default the spec defines for the object's class/key type (CKA_TOKEN,
 * CKA_PRIVATE, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_LABEL "",
 * CKA_ID "", CKA_SENSITIVE/EXTRACTABLE/..., CKA_ALWAYS_SENSITIVE,
 * CKA_NEVER_EXTRACTABLE, CKA_LOCAL, CKA_KEY_GEN_MECHANISM, capability flags
 * CKA_ENCRYPT/DECRYPT/SIGN/VERIFY/WRAP/UNWRAP/DERIVE defaults, ...).
 *  - mode GENERATE: `cls` and `ktype` are implied by the mechanism (template
 *    values that disagree -> CKR_TEMPLATE_INCONSISTENT); `mech` is recorded
 *    as CKA_KEY_GEN_MECHANISM and CKA_LOCAL=TRUE.
 *  - mode CREATE: CKA_CLASS is required (CKR_TEMPLATE_INCOMPLETE), key objects
 *    need CKA_KEY_TYPE and their key material attributes.
 * Returns CKR_OK, CKR_ATTRIBUTE_TYPE_INVALID (unknown type),
 * CKR_ATTRIBUTE_VALUE_INVALID (bad length/value), CKR_ATTRIBUTE_READ_ONLY
 * (attribute the caller may not set in this mode), CKR_TEMPLATE_INCOMPLETE,
 * CKR_TEMPLATE_INCONSISTENT, CKR_HOST_MEMORY, CKR_ARGUMENTS_BAD (tmpl NULL with n>0). */
TOK_API CK_RV tok_policy_build(tok_build_mode mode, CK_OBJECT_CLASS cls, CK_KEY_TYPE ktype,
                               CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                               tok_attrs *out);
/* For CREATE with cls/ktype unknown: pass cls = (CK_OBJECT_CLASS)-1, ktype = (CK_KEY_TYPE)-1. */
#define TOK_CLASS_FROM_TEMPLATE ((CK_OBJECT_CLASS)-1)
#define TOK_KTYPE_FROM_TEMPLATE ((CK_KEY_TYPE)-1)

/* After key material was added (generate/unwrap/derive), derive the
 * attributes that depend on it: CKA_ALWAYS_SENSITIVE = CKA_SENSITIVE,
 * CKA_NEVER_EXTRACTABLE = !CKA_EXTRACTABLE for local keys; unchanged/FALSE
 * for imported keys. */
TOK_API CK_RV tok_policy_finish(tok_build_mode mode, tok_attrs *obj);

/* C_GetAttributeValue semantics on a stored object: fills tmpl per spec
 * (NULL pValue -> length; short buffer -> CK_UNAVAILABLE_INFORMATION and
 * CKR_BUFFER_TOO_SMALL; sensitive or unextractable secret -> CK_UNAVAILABLE_INFORMATION
 * and CKR_ATTRIBUTE_SENSITIVE; unknown/absent -> CK_UNAVAILABLE_INFORMATION and
 * CKR_ATTRIBUTE_TYPE_INVALID), processing every entry, returning the first
 * such error in the order the spec allows (any of them). */
TOK_API CK_RV tok_policy_get(const tok_attrs *obj, CK_ATTRIBUTE *tmpl, CK_ULONG n);

/* C_SetAttributeValue: check and apply tmpl to a copy of obj. Refuses
 * read-only attributes (CKR_ATTRIBUTE_READ_ONLY), CKA_MODIFIABLE=FALSE objects
 * (CKR_ACTION_PROHIBITED), CKA_SENSITIVE TRUE->FALSE and CKA_EXTRACTABLE
 * FALSE->TRUE (CKR_ATTRIBUTE_READ_ONLY), changing CKA_TOKEN/CKA_PRIVATE/
 * CKA_CLASS/CKA_KEY_TYPE/key material (CKR_ATTRIBUTE_READ_ONLY). On success
 * *out holds the new attribute set (caller frees). */
TOK_API CK_RV tok_policy_set(const tok_attrs *obj, const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out);

/* C_CopyObject: CKA_COPYABLE must be TRUE (CKR_ACTION_PROHIBITED); tmpl may
 * change only CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE, CKA_DESTROYABLE, CKA_LABEL,
 * CKA_ID, CKA_SENSITIVE (FALSE->TRUE), CKA_EXTRACTABLE (TRUE->FALSE), others
 * -> CKR_ATTRIBUTE_READ_ONLY. */
/* wrap_policy = strict (configuration, kept in tok_settings.c): see
 * tok_policy.c and tok_access.c. */
TOK_API void tok_policy_set_wrap_strict(bool strict);
TOK_API bool tok_policy_wrap_strict(void);
TOK_API CK_RV tok_policy_copy(const tok_attrs *obj, const CK_ATTRIBUTE *tmpl, CK_ULONG n, tok_attrs *out);

/* Attribute templates (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE,
 * CKA_DERIVE_TEMPLATE): stored
 * packed (the tok_attrs serialized form) as the attribute's value. */
TOK_API bool tok_attr_is_template(CK_ATTRIBUTE_TYPE t);
/* The nested template of obj's attribute t, or CKR_OK with an empty set when absent. */
TOK_API CK_RV tok_template_get(const tok_attrs *obj, CK_ATTRIBUTE_TYPE t, tok_attrs *out);
/* Add the attributes of `extra` that tmpl lacks to a copy of tmpl (*out,
 * *nout; malloc'd array whose values point into tmpl and extra); a type in
 * both with different values is CKR_TEMPLATE_INCONSISTENT. */
TOK_API CK_RV tok_template_merge(const CK_ATTRIBUTE *tmpl, CK_ULONG n, const tok_attrs *extra, CK_ATTRIBUTE **out,
                                 CK_ULONG *nout);
/* Does obj have every attribute of t, with the same value? */
TOK_API bool tok_template_matches(const tok_attrs *obj, const tok_attrs *t);


/* Convenience readers for the pkcs11 layer (and tok_obj_is_token,
 * tok_obj_is_private: tok_attr.h). */
TOK_API CK_OBJECT_CLASS tok_obj_class(const tok_attrs *obj);
/* Template lookup: CKA_TOKEN/CKA_PRIVATE as given in a caller template,
 * with the default used when absent. CKR_ATTRIBUTE_VALUE_INVALID on a bad length. */
TOK_API CK_RV tok_tmpl_bool(const CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_ATTRIBUTE_TYPE t, bool dflt, bool *out);

#endif
