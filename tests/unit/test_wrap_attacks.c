/* The key-extraction attacks of the literature against the built module,
 * under wrap_policy = default and = strict (p11mk.conf(5)):
 *
 *   A1 wrap then decrypt    (Clulow 2003): a key that wraps and decrypts wraps
 *                           the sensitive key, then decrypts the blob.
 *   A2 encrypt then unwrap  (Clulow): a key that encrypts and unwraps turns a
 *                           value of the attacker's into a wrapping key.
 *   A3 re-import            (Bortolozzo et al. 2010): the sensitive key is
 *                           wrapped, then unwrapped as a non-sensitive,
 *                           extractable key whose value is read.
 *   A4 known wrapping key   : a key of known value is imported with CKA_WRAP
 *                           and the sensitive key wrapped under it.
 *   A5 change of role       : a key that may only wrap wraps the sensitive key,
 *                           then a copy of it, or the key itself changed by
 *                           C_SetAttributeValue, decrypts the blob (a copy
 *                           cannot change usages in either mode; a change
 *                           can, unless strict).
 *   A6 password key         : a key from CKM_PKCS5_PBKD2 is "local", but its
 *                           value follows from the password: it wraps the
 *                           sensitive key, the blob is opened offline.
 *   A7 truncation           : the sensitive key wrapped with ECB is unwrapped
 *                           as a 1-byte (then 2-byte) HMAC key (CKA_VALUE_LEN
 *                           takes the first bytes), whose MACs give the bytes
 *                           away one at a time.
 *   A8 padding oracle       : strict unwraps only with mechanisms that check
 *                           integrity (AES key wrap, OAEP), so CBC_PAD, which
 *                           Vaudenay's oracle needs, does not unwrap at all.
 *
 * Each attack ends by comparing what it recovered with the sensitive key's
 * true value, known only to the test (imported sensitive): in the default
 * mode every attack must succeed (the test shows the risk is real, so the
 * strict checks are not vacuous); in strict mode each must fail, and what a
 * user needs (wrapping with a key made on the token) must still work. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <p11-kit/pkcs11.h>

#include "tests/unit/ks_test_util.h"
#include "tests/unit/test_params.h"

#define CK(call) assert_int_equal((call), CKR_OK)

static void *dl;
static CK_FUNCTION_LIST *f;
static char tmp[64];
static CK_SESSION_HANDLE h;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static const char SO[] = "so-secret", PIN[] = "user-pin";
/* The sensitive key the attacks are after: the test alone knows its value. */
static const uint8_t target_val[16] = "TARGET-KEY-0123";
static const uint8_t known_val[16] = "ATTACKER-KNOWN-1";
static CK_OBJECT_HANDLE target;
static bool strict;


static int open_module(bool strict_mode)
{
    const char *mod = getenv("P11MK_MODULE");
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    char conf[128];
    CK_SLOT_ID slots[16];
    CK_ULONG ns = 16;
    CK_UTF8CHAR label[32];

    strict = strict_mode;
    snprintf(tmp, sizeof(tmp), "/tmp/p11mk-wrapatk-XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    snprintf(conf, sizeof(conf), "%s/p11mk.conf", tmp);
    FILE *c = fopen(conf, "w");
    if (!c)
        return -1;
    fprintf(c, "keystore = %s/ks\nlog = %s/p11mk.log\nwrap_policy = %s\n", tmp, tmp, strict ? "strict" : "default");
    fclose(c);
    setenv("P11MK_CONF", conf, 1);
    dl = dlopen(mod ? mod : "pkcs11/p11mk-pkcs11.so", RTLD_NOW | RTLD_LOCAL);
    if (!dl || !(gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(dl, "C_GetFunctionList")) || gfl(&f) != CKR_OK ||
        f->C_Initialize(NULL) != CKR_OK || f->C_GetSlotList(CK_FALSE, slots, &ns) != CKR_OK || ns == 0)
        return -1;
    memset(label, ' ', sizeof(label));
    memcpy(label, "attacks", 7);
    if (f->C_InitToken(slots[ns - 1], (CK_UTF8CHAR_PTR)SO, strlen(SO), label) != CKR_OK ||
        f->C_OpenSession(slots[ns - 1], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h) != CKR_OK ||
        f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR)SO, strlen(SO)) != CKR_OK ||
        f->C_InitPIN(h, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) != CKR_OK || f->C_Logout(h) != CKR_OK ||
        f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)) != CKR_OK)
        return -1;
    /* The target: sensitive, extractable (it may be wrapped, never read). */
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE, (void *)target_val, 16}, {CKA_SENSITIVE, &yes, 1},
                        {CKA_EXTRACTABLE, &yes, 1},          {CKA_ENCRYPT, &yes, 1},
                        {CKA_WRAP, &no, 1},                   {CKA_UNWRAP, &no, 1}};
    return f->C_CreateObject(h, t, sizeof(t) / sizeof(t[0]), &target) == CKR_OK ? 0 : -1;
}

static int setup_default(void **state)
{
    (void)state;
    return open_module(false);
}

static int setup_strict(void **state)
{
    (void)state;
    return open_module(true);
}

static int teardown(void **state)
{
    (void)state;
    if (f)
        f->C_Finalize(NULL);
    if (dl)
        dlclose(dl);
    dl = NULL;
    f = NULL;
    rm_rf(tmp);
    return 0;
}

/* A secret key; value NULL: generated on the token. Returns the CK_RV. */
static CK_RV make_key(const uint8_t *value, bool wrap, bool unwrap, bool enc, bool dec, bool sensitive,
                      CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 16;
    CK_BBOOL w = wrap, u = unwrap, e = enc, d = dec, s = sensitive;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_WRAP, &w, 1},
                        {CKA_UNWRAP, &u, 1},            {CKA_ENCRYPT, &e, 1},             {CKA_DECRYPT, &d, 1},
                        {CKA_SENSITIVE, &s, 1},         {CKA_VALUE, (void *)value, 16}};
    if (value)
        return f->C_CreateObject(h, t, 8, out);
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    t[7] = (CK_ATTRIBUTE){CKA_VALUE_LEN, &len, sizeof(len)};
    return f->C_GenerateKey(h, &gen, t, 8, out);
}

static CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};

/* AES-128-ECB of 16 bytes with a key the attacker knows, outside the token. */
static void ecb_offline(const uint8_t key[16], const uint8_t *in, uint8_t *out, int enc)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0;
    assert_int_equal(EVP_CipherInit_ex2(c, EVP_aes_128_ecb(), key, NULL, enc, NULL), 1);
    EVP_CIPHER_CTX_set_padding(c, 0);
    assert_int_equal(EVP_CipherUpdate(c, out, &n, in, 16), 1);
    EVP_CIPHER_CTX_free(c);
}

/* The attack recovered the target's value (true) or not. */
static void outcome(const char *name, bool recovered)
{
    printf("%s, wrap_policy=%s: %s\n", name, strict ? "strict" : "default",
           recovered ? "the sensitive key's value was recovered" : "refused");
    assert_true(recovered != strict);
}

static void a1_wrap_then_decrypt(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE k;
    uint8_t blob[64], got[64];
    CK_ULONG bl = sizeof(blob), gl = sizeof(got);
    bool recovered = false;
    if (make_key(NULL, true, false, false, true, true, &k) == CKR_OK &&
        f->C_WrapKey(h, &ecb, k, target, blob, &bl) == CKR_OK && f->C_DecryptInit(h, &ecb, k) == CKR_OK &&
        f->C_Decrypt(h, blob, bl, got, &gl) == CKR_OK)
        recovered = gl == 16 && memcmp(got, target_val, 16) == 0;
    outcome("A1 wrap then decrypt", recovered);
}

static void a2_encrypt_then_unwrap(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE k, known = CK_INVALID_HANDLE;
    uint8_t ct[16], blob[64], got[16];
    CK_ULONG cl = sizeof(ct), bl = sizeof(blob);
    bool recovered = false;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_WRAP, &yes, 1},
                         {CKA_ENCRYPT, &no, 1},          {CKA_DECRYPT, &no, 1},           {CKA_TOKEN, &no, 1}};
    if (make_key(NULL, false, true, true, false, true, &k) == CKR_OK && f->C_EncryptInit(h, &ecb, k) == CKR_OK &&
        f->C_Encrypt(h, (CK_BYTE_PTR)known_val, 16, ct, &cl) == CKR_OK &&
        f->C_UnwrapKey(h, &ecb, k, ct, cl, ut, 6, &known) == CKR_OK &&
        f->C_WrapKey(h, &ecb, known, target, blob, &bl) == CKR_OK && bl == 16) {
        ecb_offline(known_val, blob, got, 0);
        recovered = memcmp(got, target_val, 16) == 0;
    }
    outcome("A2 encrypt then unwrap", recovered);
}

static void a3_reimport_non_sensitive(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE w, copy;
    uint8_t blob[64], got[32];
    CK_ULONG bl = sizeof(blob);
    bool recovered = false;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_SENSITIVE, &no, 1},        {CKA_EXTRACTABLE, &yes, 1},
                         {CKA_ENCRYPT, &yes, 1},         {CKA_TOKEN, &no, 1}};
    /* A proper wrapping key, made on the token (strict lets it wrap), and
     * a mechanism strict unwraps with. */
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_RV rv = make_key(NULL, true, true, false, false, true, &w);
    assert_int_equal(rv, CKR_OK);
    CK(f->C_WrapKey(h, &kw, w, target, blob, &bl));
    if (f->C_UnwrapKey(h, &kw, w, blob, bl, ut, 6, &copy) == CKR_OK) {
        CK_ATTRIBUTE v = {CKA_VALUE, got, sizeof(got)};
        recovered = f->C_GetAttributeValue(h, copy, &v, 1) == CKR_OK && v.ulValueLen == 16 &&
                    memcmp(got, target_val, 16) == 0;
    }
    outcome("A3 re-import as non-sensitive", recovered);
    /* What users need keeps working under both: wrap and unwrap as sensitive. */
    ut[2].pValue = &yes;
    CK(f->C_UnwrapKey(h, &kw, w, blob, bl, ut, 6, &copy));
}

static void a4_known_wrapping_key(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE k;
    uint8_t blob[64], got[16];
    CK_ULONG bl = sizeof(blob);
    bool recovered = false;
    if (make_key(known_val, true, false, false, false, false, &k) == CKR_OK &&
        f->C_WrapKey(h, &ecb, k, target, blob, &bl) == CKR_OK && bl == 16) {
        ecb_offline(known_val, blob, got, 0);
        recovered = memcmp(got, target_val, 16) == 0;
    }
    outcome("A4 wrap under a known key", recovered);
}

static void a5_change_of_role(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE w, twin;
    uint8_t blob[64], got[64];
    CK_ULONG bl = sizeof(blob), gl;
    bool recovered = false;
    assert_int_equal(make_key(NULL, true, false, false, false, true, &w), CKR_OK);
    CK(f->C_WrapKey(h, &ecb, w, target, blob, &bl));
    CK_ATTRIBUTE as_decrypter[] = {{CKA_WRAP, &no, 1}, {CKA_DECRYPT, &yes, 1}};
    gl = sizeof(got);
    if (f->C_CopyObject(h, w, as_decrypter, 2, &twin) == CKR_OK && f->C_DecryptInit(h, &ecb, twin) == CKR_OK &&
        f->C_Decrypt(h, blob, bl, got, &gl) == CKR_OK)
        recovered = gl == 16 && memcmp(got, target_val, 16) == 0;
    CK_ATTRIBUTE off[] = {{CKA_WRAP, &no, 1}}, on[] = {{CKA_DECRYPT, &yes, 1}};
    gl = sizeof(got);
    if (f->C_SetAttributeValue(h, w, off, 1) == CKR_OK && f->C_SetAttributeValue(h, w, on, 1) == CKR_OK &&
        f->C_DecryptInit(h, &ecb, w) == CKR_OK && f->C_Decrypt(h, blob, bl, got, &gl) == CKR_OK)
        recovered = recovered || (gl == 16 && memcmp(got, target_val, 16) == 0);
    outcome("A5 change of role (copy, then C_SetAttributeValue)", recovered);
}

static void a6_password_key(void **state)
{
    (void)state;
    static const char pw[] = "password", salt[] = "salt-salt";
    test_pbkd2_params pp = {1 /* CKZ_SALT_SPECIFIED */, (void *)salt, sizeof(salt) - 1, 1000,
                            4 /* CKP_PKCS5_PBKD2_HMAC_SHA256 */, NULL, 0, (CK_UTF8CHAR_PTR)pw, sizeof(pw) - 1};
    CK_MECHANISM pbkdf = {CKM_PKCS5_PBKD2, &pp, sizeof(pp)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 16;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_WRAP, &yes, 1},            {CKA_ENCRYPT, &no, 1},           {CKA_DECRYPT, &no, 1},
                        {CKA_SENSITIVE, &yes, 1},       {CKA_EXTRACTABLE, &no, 1}};
    CK_OBJECT_HANDLE k;
    uint8_t key[16], blob[64], got[16];
    CK_ULONG bl = sizeof(blob);
    bool recovered = false;
    assert_int_equal(PKCS5_PBKDF2_HMAC(pw, sizeof(pw) - 1, (const unsigned char *)salt, sizeof(salt) - 1, 1000,
                                       EVP_sha256(), 16, key), 1);
    if (f->C_GenerateKey(h, &pbkdf, t, 8, &k) == CKR_OK && f->C_WrapKey(h, &ecb, k, target, blob, &bl) == CKR_OK &&
        bl == 16) {
        ecb_offline(key, blob, got, 0);
        recovered = memcmp(got, target_val, 16) == 0;
    }
    outcome("A6 wrap under a password-derived key", recovered);
}

static void a7_truncation(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE w, part;
    uint8_t blob[64], mac[32], want[32];
    CK_ULONG bl = sizeof(blob), ml;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG len;
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_VALUE_LEN, &len, sizeof(len)},
                         {CKA_SIGN, &yes, 1},            {CKA_TOKEN, &no, 1}};
    CK_MECHANISM hmac = {CKM_SHA256_HMAC, NULL, 0};
    static const char msg[] = "known message";
    uint8_t found[2];
    int got = 0;
    assert_int_equal(make_key(NULL, true, true, false, false, true, &w), CKR_OK);
    CK(f->C_WrapKey(h, &ecb, w, target, blob, &bl));
    for (len = 1; len <= 2; len++) {
        ml = sizeof(mac);
        if (f->C_UnwrapKey(h, &ecb, w, blob, bl, ut, 5, &part) != CKR_OK || f->C_SignInit(h, &hmac, part) != CKR_OK ||
            f->C_Sign(h, (CK_BYTE_PTR)msg, sizeof(msg) - 1, mac, &ml) != CKR_OK)
            break;
        for (int b = 0; b < 256; b++) { /* offline: the one unknown byte */
            unsigned wl = 0;
            found[len - 1] = (uint8_t)b;
            HMAC(EVP_sha256(), found, (int)len, (const unsigned char *)msg, sizeof(msg) - 1, want, &wl);
            if (memcmp(want, mac, 32) == 0) {
                got++;
                break;
            }
        }
    }
    outcome("A7 truncated unwrap, byte by byte", got == 2 && memcmp(found, target_val, 2) == 0);
}

static void a8_no_oracle_mechanisms(void **state)
{
    (void)state;
    static const CK_MECHANISM_TYPE open[] = {CKM_AES_ECB, CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_RSA_PKCS};
    CK_SLOT_ID slot;
    CK_SESSION_INFO si;
    CK(f->C_GetSessionInfo(h, &si));
    slot = si.slotID;
    bool unwraps = true;
    for (size_t i = 0; i < sizeof(open) / sizeof(open[0]); i++) {
        CK_MECHANISM_INFO mi;
        CK(f->C_GetMechanismInfo(slot, open[i], &mi));
        unwraps = unwraps && (mi.flags & CKF_UNWRAP);
    }
    CK_OBJECT_HANDLE w, k;
    uint8_t iv[16] = {0}, blob[64] = {0};
    CK_MECHANISM cbcpad = {CKM_AES_CBC_PAD, iv, 16};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE ut[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1}};
    assert_int_equal(make_key(NULL, true, true, false, false, true, &w), CKR_OK);
    CK_RV rv = f->C_UnwrapKey(h, &cbcpad, w, blob, 32, ut, 3, &k);
    printf("A8 CBC_PAD unwrap, wrap_policy=%s: %s (0x%lx)\n", strict ? "strict" : "default",
           unwraps ? "listed for unwrap" : "not listed for unwrap", (unsigned long)rv);
    assert_int_equal(unwraps, !strict);
    if (strict)
        assert_int_equal(rv, CKR_MECHANISM_INVALID);
    else
        assert_true(rv == CKR_OK || rv == CKR_WRAPPED_KEY_INVALID); /* the answer the oracle reads */
}

/* strict: a template asking for both roles is refused; one that asks for
 * one role gets the other off; the defaults stay usable. */
static void strict_roles(void **state)
{
    (void)state;
    CK_OBJECT_HANDLE k;
    assert_int_equal(make_key(NULL, true, false, false, true, true, &k),
                     strict ? CKR_TEMPLATE_INCONSISTENT : CKR_OK);
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 16;
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof(len)}};
    CK(f->C_GenerateKey(h, &gen, t, 1, &k)); /* pkcs11-tool --keygen's template */
    CK_BBOOL w = CK_FALSE, e = CK_FALSE;
    CK_ATTRIBUTE q[] = {{CKA_WRAP, &w, 1}, {CKA_ENCRYPT, &e, 1}};
    CK(f->C_GetAttributeValue(h, k, q, 2));
    assert_true(e);
    assert_int_equal(w, strict ? CK_FALSE : CK_TRUE);
    CK_ATTRIBUTE set[] = {{CKA_WRAP, &yes, 1}};
    assert_int_equal(f->C_SetAttributeValue(h, k, set, 1), strict ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(a1_wrap_then_decrypt, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a2_encrypt_then_unwrap, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a3_reimport_non_sensitive, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a4_known_wrapping_key, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a5_change_of_role, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a6_password_key, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a7_truncation, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a8_no_oracle_mechanisms, setup_default, teardown),
        cmocka_unit_test_setup_teardown(strict_roles, setup_default, teardown),
        cmocka_unit_test_setup_teardown(a1_wrap_then_decrypt, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(a2_encrypt_then_unwrap, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(a3_reimport_non_sensitive, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(a4_known_wrapping_key, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(a5_change_of_role, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(a6_password_key, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(a7_truncation, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(a8_no_oracle_mechanisms, setup_strict, teardown),
        cmocka_unit_test_setup_teardown(strict_roles, setup_strict, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
