/* p11mk-admin list: the tokens and their objects, with RFC 7512 pkcs11: URIs
 * (p11-kit's URI API), as an administrator sees them: every object, private
 * ones included, without logging in (the admin holds the master key). */
#include "admin.h"
#include "keystore/ks.h"
#include "token/tok_aead.h"
#include "token/tok_policy.h"
#include "token/tok_admin.h"

#include <stdlib.h>
#include <string.h>

#include <p11-kit/uri.h>

static const char *class_name(CK_OBJECT_CLASS c)
{
    switch (c) {
    case CKO_DATA: return "data";
    case CKO_CERTIFICATE: return "cert";
    case CKO_PUBLIC_KEY: return "public";
    case CKO_PRIVATE_KEY: return "private";
    case CKO_SECRET_KEY: return "secret-key";
    default: return "other";
    }
}

static const char *ktype_name(const tok_attrs *a)
{
    CK_ULONG kt;
    if (!tok_attrs_get_ulong(a, CKA_KEY_TYPE, &kt))
        return "";
    switch (kt) {
    case CKK_RSA: return "rsa";
    case CKK_EC: return "ec";
    case CKK_AES: return "aes";
    case CKK_CHACHA20: return "chacha20";
    case CKK_GENERIC_SECRET: return "generic";
    case CKK_SHA_1_HMAC:
    case CKK_SHA224_HMAC:
    case CKK_SHA256_HMAC:
    case CKK_SHA384_HMAC:
    case CKK_SHA512_HMAC: return "hmac";
    default: return "other";
    }
}

static void hex(const tok_attr *a, char *out, size_t n)
{
    static const char h[] = "0123456789abcdef";
    size_t k = 0;
    for (size_t i = 0; a && i < a->len && k + 3 < n; i++) {
        out[k++] = h[a->val[i] >> 4];
        out[k++] = h[a->val[i] & 15];
    }
    out[k] = '\0';
}

static void text(const tok_attr *a, char *out, size_t n)
{
    size_t l = a ? (a->len < n - 1 ? a->len : n - 1) : 0;
    if (l)
        memcpy(out, a->val, l);
    out[l] = '\0';
}

static void flags(const tok_attrs *a, char *out, size_t n)
{
    static const struct {
        CK_ATTRIBUTE_TYPE t;
        const char *name;
    } f[] = {{CKA_PRIVATE, "private"}, {CKA_SENSITIVE, "sensitive"}, {CKA_EXTRACTABLE, "extractable"},
             {CKA_LOCAL, "local"},     {CKA_MODIFIABLE, "modifiable"}, {CKA_SIGN, "sign"},
             {CKA_VERIFY, "verify"},   {CKA_ENCRYPT, "encrypt"},       {CKA_DECRYPT, "decrypt"}};
    out[0] = '\0';
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (tok_attrs_get_bool(a, f[i].t, false)) {
            if (out[0])
                strncat(out, ",", n - strlen(out) - 1);
            strncat(out, f[i].name, n - strlen(out) - 1);
        }
}

/* pkcs11:token=...;object=...;id=...;type=... for one object of a token. */
static char *object_uri(const CK_TOKEN_INFO *ti, const tok_attrs *a)
{
    P11KitUri *uri = p11_kit_uri_new();
    char *s = NULL;
    CK_OBJECT_CLASS cls = tok_obj_class(a);
    if (!uri)
        return NULL;
    memcpy(p11_kit_uri_get_token_info(uri), ti, sizeof(*ti));
    CK_ATTRIBUTE c = {CKA_CLASS, &cls, sizeof(cls)};
    p11_kit_uri_set_attribute(uri, &c);
    const tok_attr *l = tok_attrs_find(a, CKA_LABEL), *id = tok_attrs_find(a, CKA_ID);
    if (l && l->len) {
        CK_ATTRIBUTE la = {CKA_LABEL, l->val, l->len};
        p11_kit_uri_set_attribute(uri, &la);
    }
    if (id && id->len) {
        CK_ATTRIBUTE ia = {CKA_ID, id->val, id->len};
        p11_kit_uri_set_attribute(uri, &ia);
    }
    if (p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &s) != P11_KIT_URI_OK)
        s = NULL;
    p11_kit_uri_free(uri);
    return s;
}

static char *token_uri(const CK_TOKEN_INFO *ti)
{
    P11KitUri *uri = p11_kit_uri_new();
    char *s = NULL;
    if (!uri)
        return NULL;
    memcpy(p11_kit_uri_get_token_info(uri), ti, sizeof(*ti));
    if (p11_kit_uri_format(uri, P11_KIT_URI_FOR_TOKEN, &s) != P11_KIT_URI_OK)
        s = NULL;
    p11_kit_uri_free(uri);
    return s;
}

static void trim(const CK_UTF8CHAR in[32], char out[33])
{
    int n = 32;
    memcpy(out, in, 32);
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

/* The token in slot, if --slot N or --token LABEL (when given) select it:
 * its info and its label without the padding. */
static bool token_selected(const admin_opts *o, const tok_token_row *t, char label[33])
{
    trim(t->info.label, label);
    if (o->slot)
        return t->slot == o->slot;
    return !o->token || strcmp(o->token, label) == 0;
}

/* Nothing matched --slot N or --token LABEL. */
static void no_token_error(const admin_opts *o)
{
    if (o->slot)
        admin_error("no token in slot %lu; 'p11mk-admin list' shows the tokens and their slots", o->slot);
    else
        admin_error("no token labeled '%s'; 'p11mk-admin list' shows the tokens", o->token);
}

int admin_list(const admin_opts *o)
{
    tok_ctx *ctx = NULL;
    tok_token_row *toks = NULL;
    size_t nt = 0;
    bool first_tok = true, found = false;

    if (tok_ctx_open(TOK_CTX_STDERR, &ctx) != CKR_OK)
        return admin_exit_for_open();
    if (tok_token_rows(ctx, &toks, &nt) != CKR_OK) {
        admin_error("cannot read the tokens of keystore %s; check it with 'p11mk-admin verify'",
                    tok_ctx_config(ctx)->keystore);
        tok_ctx_close(ctx);
        return EXIT_KEYSTORE;
    }
    if (o->json)
        printf("{\"tokens\": [");
    for (size_t si = 0; si < nt; si++) {
        const CK_TOKEN_INFO *tinfo = &toks[si].info;
        CK_SLOT_ID slot = toks[si].slot;
        char label[33];
        if (!token_selected(o, &toks[si], label))
            continue;
        found = true;
        char *turi = token_uri(tinfo);
        uint64_t *oids = NULL;
        size_t n = 0;
        tok_obj_candidates(ctx, slot, NULL, 0, &oids, &n);
        if (o->json) {
            printf("%s\n  {\"slot\": %lu, \"label\": ", first_tok ? "" : ",", (unsigned long)slot);
            admin_json_str(stdout, label);
            printf(", \"uri\": ");
            admin_json_str(stdout, turi ? turi : "");
            printf(", \"objects\": [");
        } else {
            printf("Token %s (slot %lu)\n  %s\n", label, (unsigned long)slot, turi ? turi : "");
        }
        first_tok = false;
        free(turi);
        for (size_t i = 0; i < n; i++) {
            tok_attrs a = TOK_ATTRS_INIT;
            uint32_t epoch = 0;
            char lab[128], idh[130], fl[160];
            bool sealed = false;
            if (tok_obj_read_meta(ctx, slot, oids[i], &a, &sealed, &epoch) != CKR_OK) {
                if (o->json)
                    printf("%s\n    {\"handle\": %llu, \"error\": \"cannot be unsealed\"}", i ? "," : "",
                           (unsigned long long)oids[i]);
                else
                    printf("  %-10s handle %llu: cannot be unsealed (run p11mk-admin verify)\n", "?",
                           (unsigned long long)oids[i]);
                continue;
            }
            text(tok_attrs_find(&a, CKA_LABEL), lab, sizeof(lab));
            hex(tok_attrs_find(&a, CKA_ID), idh, sizeof(idh));
            flags(&a, fl, sizeof(fl));
            if (sealed) /* its values are in an envelope only a PIN opens */
                strncat(fl, fl[0] ? ",values-need-pin" : "values-need-pin", sizeof(fl) - strlen(fl) - 1);
            char *uri = object_uri(tinfo, &a);
            if (o->json) {
                printf("%s\n    {\"handle\": %llu, \"class\": \"%s\", \"key_type\": \"%s\", \"label\": ", i ? "," : "",
                       (unsigned long long)oids[i], class_name(tok_obj_class(&a)), ktype_name(&a));
                admin_json_str(stdout, lab);
                printf(", \"id\": \"%s\", \"flags\": \"%s\", \"epoch\": %u, \"uri\": ", idh, fl, epoch);
                admin_json_str(stdout, uri ? uri : "");
                printf("}");
            } else {
                printf("  %-10s %-8s label=%-20s id=%-10s epoch=%u %s\n    %s\n", class_name(tok_obj_class(&a)),
                       ktype_name(&a), lab, idh[0] ? idh : "-", epoch, fl, uri ? uri : "");
            }
            free(uri);
            tok_attrs_free(&a);
        }
        if (o->json)
            printf("%s]}", n ? "\n  " : "");
        free(oids);
    }
    if (o->json)
        printf("%s]}\n", first_tok ? "" : "\n");
    free(toks);
    tok_ctx_close(ctx);
    if ((o->token || o->slot) && !found) {
        no_token_error(o);
        return EXIT_FAILED;
    }
    return EXIT_OK;
}

/* The token named by --slot N or --token LABEL (exactly one must match). */
static int pick_token(tok_ctx *ctx, const admin_opts *o, CK_SLOT_ID *slot, char label[33], uint64_t *objects)
{
    tok_token_row *toks = NULL;
    size_t nt = 0;
    int found = 0;

    if (tok_token_rows(ctx, &toks, &nt) != CKR_OK) {
        admin_error("cannot read the tokens of keystore %s; check it with 'p11mk-admin verify'",
                    tok_ctx_config(ctx)->keystore);
        return EXIT_KEYSTORE;
    }
    for (size_t si = 0; si < nt; si++) {
        char l[33];
        if (!token_selected(o, &toks[si], l))
            continue;
        if (found++ == 0) {
            *slot = toks[si].slot;
            *objects = toks[si].objects;
            memcpy(label, l, sizeof(l));
        }
    }
    free(toks);
    if (found == 1)
        return EXIT_OK;
    if (!found)
        no_token_error(o);
    else
        admin_error("%d tokens are labeled '%s'; name one with --slot N ('p11mk-admin list' shows the slots)", found,
                    o->token);
    return EXIT_FAILED;
}

int admin_delete_token(const admin_opts *o)
{
    tok_ctx *ctx = NULL;
    CK_SLOT_ID slot = 0;
    char label[33] = "", question[128];
    uint64_t objects = 0;
    int rc;

    if (!o->token == !o->slot) {
        admin_error("delete-token needs --token LABEL or --slot N (one of them)");
        return EXIT_USAGE;
    }
    if (tok_ctx_open(TOK_CTX_STDERR, &ctx) != CKR_OK)
        return admin_exit_for_open();
    if ((rc = pick_token(ctx, o, &slot, label, &objects)) != EXIT_OK) {
        tok_ctx_close(ctx);
        return rc;
    }
    uint64_t inc = 0;
    if (tok_token_incarnation(ctx, slot, &inc) != CKR_OK) {
        admin_error("token '%s' cannot be read; nothing was deleted. Check the keystore with 'p11mk-admin verify'",
                    label);
        tok_ctx_close(ctx);
        return EXIT_KEYSTORE;
    }
    if (!o->quiet)
        printf("Token '%s' (slot %lu) holds %llu object%s. Deleting it destroys them and its PINs for good;\n"
               "only a backup made before brings them back.\n",
               label, (unsigned long)slot, (unsigned long long)objects, objects == 1 ? "" : "s");
    snprintf(question, sizeof(question), "Delete token '%s'? [y/N] ", label);
    if (!admin_confirm(o, question)) {
        printf("Nothing was deleted.\n");
        tok_ctx_close(ctx);
        return EXIT_FAILED;
    }
    bool changed = false;
    CK_RV rv = tok_token_delete(ctx, slot, &inc, &changed); /* the token that was shown, or none */
    tok_ctx_close(ctx);
    if (changed) {
        admin_error("slot %lu changed while you were asked (the token was re-initialized or deleted by another "
                    "process); nothing was deleted. Look at 'p11mk-admin list' and run the command again",
                    (unsigned long)slot);
        return EXIT_STATE;
    }
    if (rv != CKR_OK) {
        admin_error("token '%s' could not be deleted (0x%lx); nothing was changed. Check the keystore with "
                    "'p11mk-admin verify'",
                    label, (unsigned long)rv);
        return EXIT_FAILED;
    }
    if (!o->quiet)
        printf("Deleted token '%s' (slot %lu) and its %llu object%s. Slot %lu is not given to another token:\n"
               "applications still holding it find no token there.\n",
               label, (unsigned long)slot, (unsigned long long)objects, objects == 1 ? "" : "s",
               (unsigned long)slot);
    return EXIT_OK;
}
