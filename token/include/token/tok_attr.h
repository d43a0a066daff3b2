/* p11mk token layer: attribute lists and their serialized form. */
#ifndef P11MK_TOK_ATTR_H
#define P11MK_TOK_ATTR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <p11-kit/pkcs11.h>

#define TOK_API __attribute__((visibility("hidden")))

/* PKCS#11 3.0's, not in p11-kit 0.24's header. */
#ifndef CKA_UNIQUE_ID
#define CKA_UNIQUE_ID 0x00000004UL
#endif

/* One attribute; values are owned (malloc'd) and cleansed on free. A CK_BBOOL
 * is stored as 1 byte, a CK_ULONG as sizeof(CK_ULONG) bytes (native). */
typedef struct {
    CK_ATTRIBUTE_TYPE type;
    CK_ULONG len;
    uint8_t *val; /* NULL when len == 0 */
} tok_attr;

typedef struct {
    tok_attr *v;
    size_t n, cap;
} tok_attrs;

#define TOK_ATTRS_INIT {NULL, 0, 0}

TOK_API void tok_attrs_free(tok_attrs *a);              /* cleanse all values */
TOK_API int tok_attrs_copy(tok_attrs *dst, const tok_attrs *src); /* 0 / -1 (ENOMEM) */
TOK_API const tok_attr *tok_attrs_find(const tok_attrs *a, CK_ATTRIBUTE_TYPE t);
/* Set (replace or append), copying the value. 0 ok, -1 ENOMEM. */
TOK_API int tok_attrs_set(tok_attrs *a, CK_ATTRIBUTE_TYPE t, const void *val, CK_ULONG len);
TOK_API int tok_attrs_set_bool(tok_attrs *a, CK_ATTRIBUTE_TYPE t, bool v);
TOK_API int tok_attrs_set_ulong(tok_attrs *a, CK_ATTRIBUTE_TYPE t, CK_ULONG v);
TOK_API void tok_attrs_remove(tok_attrs *a, CK_ATTRIBUTE_TYPE t);
/* Move every attribute of src to the end of dst (src is left empty); the
 * caller sees to it that no type is in both. 0, or -1 (ENOMEM: both unchanged). */
TOK_API int tok_attrs_take(tok_attrs *dst, tok_attrs *src);
/* Typed reads: return dflt / false when absent or of the wrong length. */
TOK_API bool tok_attrs_get_bool(const tok_attrs *a, CK_ATTRIBUTE_TYPE t, bool dflt);
TOK_API bool tok_attrs_get_ulong(const tok_attrs *a, CK_ATTRIBUTE_TYPE t, CK_ULONG *out);
/* An object's CKA_TOKEN and CKA_PRIVATE (false when absent). */
TOK_API bool tok_obj_is_token(const tok_attrs *obj);
TOK_API bool tok_obj_is_private(const tok_attrs *obj);

/* Stable serialized form (little endian TLV with a version byte; CK_ULONG
 * values are stored as 8-byte integers so the format is portable). */
TOK_API int tok_attrs_serialize(const tok_attrs *a, uint8_t **out, size_t *len); /* 0 / -1 */
/* 0; -1 malformed; TOK_ATTRS_NOMEM when memory ran out (the record says
 * nothing then: not to be reported as damage). */
#define TOK_ATTRS_NOMEM (-2)
TOK_API int tok_attrs_parse(const uint8_t *buf, size_t len, tok_attrs *out);
/* The same form of the n attributes v points to, in that order. 0 / -1 */
TOK_API int tok_attrs_serialize_refs(const tok_attr *const *v, size_t n, uint8_t **out, size_t *len);

/* True for attribute types whose CK_ATTRIBUTE value is a CK_ULONG/CK_BBOOL
 * (used to validate lengths in templates: CKR_ATTRIBUTE_VALUE_INVALID). */
TOK_API bool tok_attr_is_bool(CK_ATTRIBUTE_TYPE t);
TOK_API bool tok_attr_is_ulong(CK_ATTRIBUTE_TYPE t);
/* True if the attribute type holds secret key material (CKA_VALUE of secret
 * and private keys, CKA_PRIVATE_EXPONENT, CKA_PRIME_1/2, CKA_EXPONENT_1/2,
 * CKA_COEFFICIENT) for an object of class cls. */
TOK_API bool tok_attr_is_secret(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE t);
/* Remove (and cleanse) every attribute tok_attr_is_secret names for the
 * list's CKA_CLASS. */
TOK_API void tok_attrs_drop_secrets(tok_attrs *a);

/* Does the object match every attribute of the template (exact bytes)? */
TOK_API bool tok_attrs_match(const tok_attrs *obj, const CK_ATTRIBUTE *tmpl, CK_ULONG n);

#endif
