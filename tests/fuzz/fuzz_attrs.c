/* Fuzz target: the packed attribute form (tok_attrs_parse/serialize) and
 * the attribute policy on what it yields.
 *
 *  - parse arbitrary bytes; when they parse, serialize must give back the
 *    same bytes (the form is canonical) and parse again to the same set;
 *  - tok_policy_get on the set: a template of NULL pValues for every type
 *    present, then exact buffers (CKA_WRAP_TEMPLATE/CKA_UNWRAP_TEMPLATE:
 *    an array of CK_ATTRIBUTE, first with NULL values, then with exact
 *    buffers), then buffers one byte short; values must come back intact;
 *  - the set as a C_CreateObject template through tok_policy_build, and on
 *    success the import checks, tok_key_from_attrs, tok_policy_set/copy. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "token/tok_attr.h"
#include "token/tok_mech.h"
#include "token/tok_policy.h"
#include "fuzz_common.h"

#define CHECK(c)                                                                                                   \
    do {                                                                                                           \
        if (!(c)) {                                                                                                \
            fprintf(stderr, "fuzz_attrs: check failed at line %d: %s\n", __LINE__, #c);                           \
            abort();                                                                                               \
        }                                                                                                          \
    } while (0)

static bool same_set(const tok_attrs *a, const tok_attrs *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const tok_attr *x = &a->v[i], *y = &b->v[i];
        if (x->type != y->type || x->len != y->len || (x->len && memcmp(x->val, y->val, x->len) != 0))
            return false;
    }
    return true;
}

static bool nested_ok(const tok_attr *a, tok_attrs *nested)
{
    *nested = (tok_attrs)TOK_ATTRS_INIT;
    return !a->len || tok_attrs_parse(a->val, a->len, nested) == 0;
}

/* tok_policy_get, three passes, the way a careful application asks. */
static void exercise_get(const tok_attrs *obj)
{
    size_t n = obj->n;
    CK_ATTRIBUTE *t = calloc(n + 1, sizeof(*t));
    void **bufs = calloc(n + 1, sizeof(*bufs));
    CK_RV rv;

    CHECK(t && bufs);
    for (size_t i = 0; i < n; i++) {
        t[i].type = obj->v[i].type;
        t[i].pValue = NULL;
        t[i].ulValueLen = 0xdeadbeef;
    }
    /* An absent type at the end. */
    t[n].type = 0x7ffffff0;
    rv = tok_policy_get(obj, t, (CK_ULONG)n + 1);
    CHECK(rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_GENERAL_ERROR);
    CHECK(t[n].ulValueLen == CK_UNAVAILABLE_INFORMATION);

    /* Pass 2: exact buffers (nested templates: arrays with NULL values). */
    for (size_t i = 0; i < n; i++) {
        if (t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            continue;
        if (tok_attr_is_template(t[i].type)) {
            CHECK(t[i].ulValueLen % sizeof(CK_ATTRIBUTE) == 0);
            CK_ATTRIBUTE *arr = calloc(t[i].ulValueLen / sizeof(CK_ATTRIBUTE) + 1, sizeof(CK_ATTRIBUTE));
            CHECK(arr);
            bufs[i] = arr;
        } else {
            CHECK(t[i].ulValueLen == obj->v[i].len);
            bufs[i] = malloc(t[i].ulValueLen ? t[i].ulValueLen : 1);
            CHECK(bufs[i]);
        }
        t[i].pValue = bufs[i];
    }
    (void)tok_policy_get(obj, t, (CK_ULONG)n);

    /* Pass 3: nested values. */
    for (size_t i = 0; i < n; i++) {
        if (!t[i].pValue || !tok_attr_is_template(t[i].type) || t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            continue;
        CK_ATTRIBUTE *arr = t[i].pValue;
        size_t m = t[i].ulValueLen / sizeof(CK_ATTRIBUTE);
        for (size_t j = 0; j < m; j++) {
            CHECK(arr[j].ulValueLen != CK_UNAVAILABLE_INFORMATION);
            arr[j].pValue = malloc(arr[j].ulValueLen ? arr[j].ulValueLen : 1);
            CHECK(arr[j].pValue);
        }
    }
    rv = tok_policy_get(obj, t, (CK_ULONG)n);
    CHECK(rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_GENERAL_ERROR);
    for (size_t i = 0; i < n; i++) {
        const tok_attr *a = &obj->v[i];
        if (!t[i].pValue || t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            continue;
        if (tok_attr_is_template(a->type)) {
            tok_attrs nested;
            CHECK(nested_ok(a, &nested));
            CHECK(t[i].ulValueLen == nested.n * sizeof(CK_ATTRIBUTE));
            CK_ATTRIBUTE *arr = t[i].pValue;
            for (size_t j = 0; j < nested.n; j++) {
                CHECK(arr[j].type == nested.v[j].type && arr[j].ulValueLen == nested.v[j].len);
                CHECK(!nested.v[j].len || memcmp(arr[j].pValue, nested.v[j].val, nested.v[j].len) == 0);
            }
            tok_attrs_free(&nested);
        } else {
            CHECK(t[i].ulValueLen == a->len && (!a->len || memcmp(t[i].pValue, a->val, a->len) == 0));
        }
    }

    /* Pass 4: every buffer one byte short. */
    for (size_t i = 0; i < n; i++) {
        if (t[i].pValue && t[i].ulValueLen && t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
            !tok_attr_is_template(t[i].type)) {
            t[i].ulValueLen--;
            rv = tok_policy_get(obj, &t[i], 1);
            CHECK(rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ATTRIBUTE_SENSITIVE);
            CHECK(t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION);
        }
    }

    for (size_t i = 0; i < n; i++) {
        if (bufs[i] && tok_attr_is_template(t[i].type)) {
            CK_ATTRIBUTE *arr = bufs[i];
            for (size_t j = 0; arr[j].pValue; j++)
                free(arr[j].pValue);
        }
        free(bufs[i]);
    }
    free(bufs);
    free(t);
}

/* The set as a caller template: nested templates become CK_ATTRIBUTE arrays. */
static void exercise_build(const tok_attrs *obj)
{
    size_t n = obj->n;
    CK_ATTRIBUTE *t = calloc(n + 1, sizeof(*t));
    tok_attrs *nested = calloc(n + 1, sizeof(*nested));
    CK_ATTRIBUTE **arrs = calloc(n + 1, sizeof(*arrs));
    tok_attrs built = TOK_ATTRS_INIT, changed = TOK_ATTRS_INIT, copied = TOK_ATTRS_INIT;
    CK_RV rv;

    CHECK(t && nested && arrs);
    for (size_t i = 0; i < n; i++) {
        const tok_attr *a = &obj->v[i];
        t[i].type = a->type;
        t[i].pValue = a->val;
        t[i].ulValueLen = a->len;
        if (tok_attr_is_template(a->type) && nested_ok(a, &nested[i])) {
            arrs[i] = calloc(nested[i].n + 1, sizeof(CK_ATTRIBUTE));
            CHECK(arrs[i]);
            for (size_t j = 0; j < nested[i].n; j++) {
                arrs[i][j].type = nested[i].v[j].type;
                arrs[i][j].pValue = nested[i].v[j].val;
                arrs[i][j].ulValueLen = nested[i].v[j].len;
            }
            t[i].pValue = nested[i].n ? arrs[i] : NULL;
            t[i].ulValueLen = nested[i].n * sizeof(CK_ATTRIBUTE);
        } else if (tok_attr_is_template(a->type)) {
            /* Not a packed template: never hand raw bytes over as a CK_ATTRIBUTE
             * array (they would hold wild pointers). NULL with a length is the
             * bad input the policy must refuse. */
            t[i].pValue = NULL;
            t[i].ulValueLen = 1;
        }
    }
    rv = tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE,
                          CK_UNAVAILABLE_INFORMATION, t, (CK_ULONG)n, &built);
    if (rv == CKR_OK && tok_attrs_find(&built, CKA_KEY_TYPE))
        rv = tok_mech_complete_import(&built);
    if (rv == CKR_OK)
        rv = tok_policy_finish(TOK_BUILD_CREATE, &built);
    if (rv == CKR_OK) {
        exercise_get(&built);
        CK_OBJECT_CLASS cls = tok_obj_class(&built);
        if (cls == CKO_PUBLIC_KEY || cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY) {
            tok_key *k = NULL;
            if (tok_key_from_attrs(&built, &k) == CKR_OK)
                tok_key_unref(k);
        }
        /* Set and copy with the caller's template itself (mostly read-only attributes). */
        if (tok_policy_set(&built, t, (CK_ULONG)n, &changed) == CKR_OK)
            CHECK(tok_attrs_find(&changed, CKA_CLASS) != NULL);
        if (tok_policy_copy(&built, t, (CK_ULONG)n, &copied) == CKR_OK)
            CHECK(tok_attrs_find(&copied, CKA_CLASS) != NULL);
        /* Nested templates of the result, as C_WrapKey / C_UnwrapKey read them. */
        tok_attrs wt = TOK_ATTRS_INIT;
        if (tok_template_get(&built, CKA_WRAP_TEMPLATE, &wt) == CKR_OK)
            (void)tok_template_matches(&built, &wt);
        if (tok_template_get(&built, CKA_UNWRAP_TEMPLATE, &wt) == CKR_OK) {
            CK_ATTRIBUTE *merged = NULL;
            CK_ULONG nm = 0;
            if (tok_template_merge(t, (CK_ULONG)n, &wt, &merged, &nm) == CKR_OK)
                free(merged);
        }
        tok_attrs_free(&wt);
    }
    tok_attrs_free(&built);
    tok_attrs_free(&changed);
    tok_attrs_free(&copied);
    for (size_t i = 0; i < n; i++) {
        tok_attrs_free(&nested[i]);
        free(arrs[i]);
    }
    free(arrs);
    free(nested);
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tok_attrs a = TOK_ATTRS_INIT, b = TOK_ATTRS_INIT;
    uint8_t *ser = NULL;
    size_t serlen = 0;

    if (tok_attrs_parse(data, size, &a) != 0)
        return 0;
    CHECK(tok_attrs_serialize(&a, &ser, &serlen) == 0);
    CHECK(serlen == size && memcmp(ser, data, size) == 0);
    CHECK(tok_attrs_parse(ser, serlen, &b) == 0);
    CHECK(same_set(&a, &b));
    free(ser);
    tok_attrs_free(&b);

    exercise_get(&a);
    exercise_build(&a);
    tok_attrs_free(&a);
    return 0;
}
