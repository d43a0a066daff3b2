/* Unit tests for the token context: token objects stored through the token
 * layer, index verification (objects missing from the index, index entries
 * pointing at nothing), and the key cache following the epoch. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keystore/ks.h"
#include "keystore/ks_tamper.h"
#include "token/tok_policy.h"
#include "token/tok_admin.h"

static char dir[64];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static int setup(void **state)
{
    char conf[128];
    FILE *f;
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/p11mk-tok-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", dir);
    f = fopen(conf, "w");
    fprintf(f, "keystore = %s/ks\nlog = %s/log\n", dir, dir);
    fclose(f);
    setenv("P11MK_CONF", conf, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static uint64_t store_data(tok_ctx *ctx, CK_SLOT_ID slot, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, (void *)label, strlen(label)}};
    tok_attrs obj = TOK_ATTRS_INIT;
    uint64_t oid = 0;
    assert_int_equal(tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, t, 3, &obj),
                     CKR_OK);
    assert_int_equal(tok_obj_store(ctx, &(tok_access){.slot = slot, .rw = true, .who = CKU_USER}, &obj, &oid), CKR_OK);
    tok_attrs_free(&obj);
    return oid;
}

typedef struct {
    uint32_t tid;
    uint64_t oid;
    const char *label;
} idx_arg;

static int drop_label_fn(ks_txn *x, void *arg)
{
    idx_arg *a = arg;
    return ks_idx_del(x, a->tid, CKA_LABEL, a->label, strlen(a->label), a->oid);
}

static int drop_object_fn(ks_txn *x, void *arg)
{
    idx_arg *a = arg;
    return ks_obj_del(x, a->tid, a->oid); /* the index entries stay behind */
}

static int calls;
static CK_ATTRIBUTE_TYPE last_type;
static void idx_cb(CK_SLOT_ID slot, uint64_t oid, CK_ATTRIBUTE_TYPE t, void *arg)
{
    (void)slot; (void)oid; (void)arg;
    calls++;
    last_type = t;
}

static char last_kind;
static void rec_cb(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg)
{
    (void)token; (void)oid; (void)err; (void)arg;
    last_kind = kind;
}

static void test_index_verification(void **state)
{
    (void)state;
    tok_ctx *ctx;
    unsigned long long missing;
    uint64_t checked, failed;
    assert_int_equal(tok_ctx_open(TOK_CTX_CREATE, &ctx), CKR_OK);
    CK_UTF8CHAR label[32];
    memset(label, ' ', sizeof(label));
    memcpy(label, "idx", 3);
    assert_int_equal(tok_token_init(ctx, 1, (const uint8_t *)"12345678", 8, label), CKR_OK);
    uint64_t a = store_data(ctx, 1, "alpha");
    uint64_t b = store_data(ctx, 1, "bravo");
    (void)a;

    assert_int_equal(tok_verify_index(ctx, idx_cb, NULL, &missing), 2);
    assert_int_equal(missing, 0);

    /* An object the index no longer finds by its label. */
    idx_arg ia = {1, b, "bravo"};
    assert_int_equal(ks_write(tok_ctx_store(ctx), drop_label_fn, &ia), KS_OK);
    calls = 0;
    assert_int_equal(tok_verify_index(ctx, idx_cb, NULL, &missing), 2);
    assert_int_equal(missing, 1);
    assert_int_equal(calls, 1);
    assert_int_equal(last_type, CKA_LABEL);

    /* Index entries of an object that is gone. */
    assert_int_equal(ks_write(tok_ctx_store(ctx), drop_object_fn, &ia), KS_OK);
    assert_int_equal(ks_verify(tok_ctx_store(ctx), rec_cb, NULL, &checked, &failed), KS_OK);
    assert_true(failed >= 1);
    assert_int_equal(last_kind, 'I');
    tok_ctx_close(ctx);
}

/* Deleting a token: its objects go, other tokens stay, a writer still holding
 * its slot gets CKR_TOKEN_NOT_PRESENT, and the slot id is never given again. */
static void test_token_delete(void **state)
{
    (void)state;
    tok_ctx *ctx;
    CK_SLOT_ID *slots;
    CK_ULONG n;
    CK_UTF8CHAR label[32];
    tok_attrs back = TOK_ATTRS_INIT;
    assert_int_equal(tok_ctx_open(TOK_CTX_CREATE, &ctx), CKR_OK);
    memset(label, ' ', sizeof(label));
    assert_int_equal(tok_token_init(ctx, 1, (const uint8_t *)"12345678", 8, label), CKR_OK);
    assert_int_equal(tok_token_init(ctx, 2, (const uint8_t *)"12345678", 8, label), CKR_OK);
    uint64_t keep = store_data(ctx, 1, "keep");
    uint64_t gone = store_data(ctx, 2, "gone");

    assert_int_equal(tok_token_delete(ctx, 2, NULL, NULL), CKR_OK);
    assert_int_equal(tok_token_delete(ctx, 2, NULL, NULL), CKR_SLOT_ID_INVALID);
    assert_int_equal(tok_obj_read(ctx, &(tok_access){.slot = 2, .rw = true, .who = CKU_USER}, gone, &back), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(tok_obj_read(ctx, &(tok_access){.slot = 1, .rw = true, .who = CKU_USER}, keep, &back), CKR_OK);
    tok_attrs_free(&back);

    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL on = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &on, 1}};
    tok_attrs obj = TOK_ATTRS_INIT;
    uint64_t oid = 0;
    assert_int_equal(tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE, 0, t, 2, &obj),
                     CKR_OK);
    assert_int_equal(tok_obj_store(ctx, &(tok_access){.slot = 2, .rw = true, .who = CKU_USER}, &obj, &oid), CKR_TOKEN_NOT_PRESENT);
    tok_attrs_free(&obj);

    /* Slots: token 1 and the free slot 3, not 2. */
    assert_int_equal(tok_slot_list(ctx, &slots, &n), CKR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(slots[0], 1);
    assert_int_equal(slots[1], 3);
    free(slots);
    assert_int_equal(tok_token_init(ctx, 2, (const uint8_t *)"12345678", 8, label), CKR_SLOT_ID_INVALID);
    assert_int_equal(tok_token_init(ctx, 3, (const uint8_t *)"12345678", 8, label), CKR_OK);
    /* Also across a reopen, and when the deleted token was the newest. */
    /* A token re-initialized since the caller looked is not deleted. */
    uint64_t inc_seen = 0;
    bool changed = false;
    assert_int_equal(tok_token_incarnation(ctx, 3, &inc_seen), CKR_OK);
    uint64_t stale = inc_seen + 1;
    assert_int_equal(tok_token_delete(ctx, 3, &stale, &changed), CKR_FUNCTION_FAILED);
    assert_true(changed);
    assert_int_equal(tok_token_delete(ctx, 3, &inc_seen, &changed), CKR_OK);
    assert_false(changed);
    tok_ctx_close(ctx);
    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    assert_int_equal(tok_slot_list(ctx, &slots, &n), CKR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(slots[1], 4);
    free(slots);
    tok_ctx_close(ctx);
}

/* The creation recipe (tok_create.c) and the admin's token rows, at the
 * token layer: the codes each function's specification lists for bad
 * handles, the write rule before any key is generated, a key pair stored
 * whole, the unwrap and derive rules of the keys named by handle. */
static void test_recipe(void **state)
{
    (void)state;
    tok_ctx *ctx;
    CK_UTF8CHAR label[32];
    assert_int_equal(tok_ctx_open(TOK_CTX_CREATE, &ctx), CKR_OK);
    memset(label, ' ', sizeof(label));
    memcpy(label, "recipe", 6);
    assert_int_equal(tok_token_init(ctx, 1, (const uint8_t *)"12345678", 8, label), CKR_OK);
    tok_access rw = {.slot = 1, .rw = true, .who = CKU_USER}, ro = {.slot = 1, .rw = false, .who = CKU_USER};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len32 = 32;
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, kw = {CKM_AES_KEY_WRAP, NULL, 0},
                 pair = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, sha = {0x402AUL /* CKM_HKDF_DERIVE */, NULL, 0};
    CK_ATTRIBUTE aes_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len32, sizeof(len32)}, {CKA_WRAP, &yes, 1},
                              {CKA_UNWRAP, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_DERIVE, &no, 1},
                           {CKA_PRIVATE, &no, 1}}; /* private objects need the token key of a C_Login */
    uint64_t k = 0, k2 = 0, pub = 0, priv = 0, h = 0;
    uint8_t out[128];
    CK_ULONG outlen = sizeof(out);

    /* An import with a bad value says so whatever the session (as before the
     * recipe); a good one in a read-only session is refused by the write rule. */
    CK_OBJECT_CLASS skc = CKO_SECRET_KEY;
    CK_KEY_TYPE aesk = CKK_AES;
    uint8_t v15[15] = {0}, v16[16] = {0};
    CK_ATTRIBUTE imp[] = {{CKA_CLASS, &skc, sizeof(skc)}, {CKA_KEY_TYPE, &aesk, sizeof(aesk)},
                          {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &no, 1}, {CKA_VALUE, v15, sizeof(v15)}};
    assert_int_equal(tok_obj_create(ctx, &ro, imp, 5, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    imp[4].pValue = v16;
    imp[4].ulValueLen = sizeof(v16);
    assert_int_equal(tok_obj_create(ctx, &ro, imp, 5, &h), CKR_SESSION_READ_ONLY);

    /* A token object in a read-only session: refused before generation. */
    assert_int_equal(tok_key_generate(ctx, &ro, &gen, aes_t, 7, &k), CKR_SESSION_READ_ONLY);
    assert_int_equal(tok_key_generate(ctx, &rw, &gen, aes_t, 7, &k), CKR_OK);
    assert_int_equal(tok_key_generate(ctx, &rw, &gen, aes_t, 7, &k2), CKR_OK);

    /* Bad handles get the code of the function. */
    assert_int_equal(tok_key_wrap(ctx, &rw, &kw, 0, k2, out, &outlen), CKR_WRAPPING_KEY_HANDLE_INVALID);
    assert_int_equal(tok_key_wrap(ctx, &rw, &kw, 999, k2, out, &outlen), CKR_WRAPPING_KEY_HANDLE_INVALID);
    assert_int_equal(tok_key_wrap(ctx, &rw, &kw, k, 999, out, &outlen), CKR_KEY_HANDLE_INVALID);
    assert_int_equal(tok_key_unwrap(ctx, &rw, &kw, 999, out, 40, NULL, 0, &h), CKR_UNWRAPPING_KEY_HANDLE_INVALID);
    assert_int_equal(tok_key_derive(ctx, &rw, &sha, 999, NULL, 0, &h), CKR_KEY_HANDLE_INVALID);
    assert_int_equal(tok_obj_copy(ctx, &rw, 999, NULL, 0, &h), CKR_OBJECT_HANDLE_INVALID);
    CK_MECHANISM none = {0x80001234UL, NULL, 0};
    assert_int_equal(tok_key_wrap(ctx, &rw, &none, k, k2, out, &outlen), CKR_MECHANISM_INVALID);

    /* Wrap, unwrap, and the base key's CKA_DERIVE. */
    outlen = sizeof(out);
    assert_int_equal(tok_key_wrap(ctx, &rw, &kw, k, k2, out, &outlen), CKR_OK);
    assert_int_equal(outlen, 40);
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &sk, sizeof(sk)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_TOKEN, &no, 1},
                         {CKA_PRIVATE, &no, 1}};
    assert_int_equal(tok_key_unwrap(ctx, &rw, &kw, k, out, outlen, ut, 4, &h), CKR_OK);
    assert_int_equal(tok_key_derive(ctx, &rw, &sha, k, NULL, 0, &h), CKR_KEY_FUNCTION_NOT_PERMITTED);

    /* A key pair: both halves stored, read back through the rows' count. */
    static const CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, (void *)p256, sizeof(p256)}, {CKA_TOKEN, &yes, 1}};
    CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_DESTROYABLE, &no, 1}, {CKA_PRIVATE, &no, 1}};
    assert_int_equal(tok_keypair_generate(ctx, &ro, &pair, pt, 2, kt, 3, &pub, &priv), CKR_SESSION_READ_ONLY);
    assert_int_equal(tok_keypair_generate(ctx, &rw, &pair, pt, 2, kt, 3, &pub, &priv), CKR_OK);
    assert_true(pub != priv && pub && priv);
    tok_token_row *rows = NULL;
    size_t nrows = 0;
    assert_int_equal(tok_token_rows(ctx, &rows, &nrows), CKR_OK);
    assert_int_equal(nrows, 1); /* the free slot is not a token */
    assert_int_equal(rows[0].slot, 1);
    assert_int_equal(rows[0].objects, 4);
    free(rows);
    tok_attrs meta = TOK_ATTRS_INIT;
    bool sealed = true;
    uint32_t epoch = 0;
    assert_int_equal(tok_obj_read_meta(ctx, 1, k, &meta, &sealed, &epoch), CKR_OK);
    assert_int_equal(epoch, 1);
    tok_attrs_free(&meta);
    assert_int_equal(tok_obj_read_meta(ctx, 1, 999, &meta, &sealed, &epoch), CKR_OBJECT_HANDLE_INVALID);
    tok_ctx_close(ctx);
}

/* One token record damaged (a byte of its sealed record flipped, as a bad
 * disk or an attacker with the files would): the token layer's listing of
 * tokens (p11mk-admin list and status) still lists the healthy token, and
 * the damaged one is reported as damage in the log. A damaged record is an
 * answer about that token, not a failure to read the storage: it must not
 * fail (or empty) the whole listing. */
static void test_damaged_token_rows(void **state)
{
    (void)state;
    tok_ctx *ctx;
    CK_UTF8CHAR label[32];
    char ks[128], logp[128];
    memset(label, ' ', sizeof(label));
    memcpy(label, "dmg", 3);
    assert_int_equal(tok_ctx_open(TOK_CTX_CREATE, &ctx), CKR_OK);
    assert_int_equal(tok_token_init(ctx, 1, (const uint8_t *)"12345678", 8, label), CKR_OK);
    assert_int_equal(tok_token_init(ctx, 2, (const uint8_t *)"12345678", 8, label), CKR_OK);
    tok_ctx_close(ctx);

    snprintf(ks, sizeof(ks), "%s/ks", dir);
    ks_tamper *t;
    uint8_t key[KS_TAMPER_TOKEN_KEY_LEN], *val = NULL;
    size_t vlen = 0;
    assert_int_equal(ks_tamper_open(ks, 0, &t), KS_OK);
    ks_tamper_token_key(key, 2);
    assert_int_equal(ks_tamper_get(t, "tokens", key, sizeof(key), &val, &vlen), KS_OK);
    assert_true(vlen > 40);
    val[vlen / 2] ^= 0x01;
    assert_int_equal(ks_tamper_put(t, "tokens", key, sizeof(key), val, vlen), KS_OK);
    free(val);
    assert_int_equal(ks_tamper_commit(t), KS_OK);

    assert_int_equal(tok_ctx_open(0, &ctx), CKR_OK);
    tok_token_row *rows = NULL;
    size_t nrows = 0;
    CK_RV rv = tok_token_rows(ctx, &rows, &nrows);
    tok_ctx_close(ctx);
    if (rv != CKR_OK)
        fail_msg("one damaged token record fails the whole token listing (CK_RV 0x%lx): the healthy token 1 "
                 "is not listed (p11mk-admin list fails, status shows no tokens)", (unsigned long)rv);
    bool one = false;
    for (size_t i = 0; i < nrows; i++)
        one |= rows[i].slot == 1;
    free(rows);
    assert_true(one);

    /* The damage is said as damage. */
    snprintf(logp, sizeof(logp), "%s/log", dir);
    FILE *f = fopen(logp, "r");
    assert_non_null(f);
    char line[2048];
    bool said = false;
    while (fgets(line, sizeof(line), f))
        said |= strstr(line, "token 2") && (strstr(line, "verify") || strstr(line, "restore"));
    fclose(f);
    assert_true(said);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_index_verification, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recipe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_token_rows, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
