/* Writes the seed corpora of the fuzz targets with the library's own
 * writers, so that seeds are valid inputs that mutations start deep from:
 *
 *   fuzz_gen_seeds DIR        (normally tests/fuzz/corpus)
 *
 * DIR/record: records sealed by ks_rec_seal under the fixed test key and
 * bindings of fuzz_common.h, and "seal then tamper" programs;
 * DIR/attrs: packed attribute sets of generated keys, data objects,
 * certificates, nested templates (tok_attrs_serialize);
 * DIR/config: configuration files and master-key registers (ks_reg_save);
 * DIR/pkcs11: programs in the byte code of fuzz_common.h that reach the
 * success paths of each operation and mechanism.
 *
 * Records hold random nonces (and keys are generated), so a new run gives
 * other bytes; the corpora are committed, re-run this only when the formats
 * or the byte code change. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keystore/ks_internal.h"
#include "token/tok_mech.h"
#include "token/tok_policy.h"
#include "fuzz_common.h"

#ifndef CKM_EC_MONTGOMERY_KEY_PAIR_GEN
#define CKM_EC_MONTGOMERY_KEY_PAIR_GEN 0x1056UL
#endif

static const char *outdir;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_gen_seeds: %s\n", what);
    exit(1);
}

static void mkdir_p(const char *d)
{
    if (mkdir(d, 0755) != 0 && errno != EEXIST)
        die(d);
}

static void put(const char *target, const char *name, const void *d, size_t n)
{
    char p[4096];
    FILE *f;
    snprintf(p, sizeof(p), "%s/%s", outdir, target);
    mkdir_p(p);
    snprintf(p, sizeof(p), "%s/%s/%s", outdir, target, name);
    f = fopen(p, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0)
        die(p);
}

/* ---- record ---------------------------------------------------------------- */

static void gen_record(void)
{
    static const size_t lens[] = {0, 1, 16, 100, 600};
    ks_mkey mk;
    uint8_t key[32], pt[600], *rec, buf[1024];
    size_t reclen;
    char name[64];

    memset(&mk, 0, sizeof(mk));
    memcpy(mk.key, fz_master_key, 32);
    for (uint32_t e = FZ_EPOCH_MIN; e <= FZ_EPOCH_MAX; e++) {
        if (ks_rec_key(&mk, fz_ksid, e, key) != KS_OK)
            die("ks_rec_key");
        for (size_t b = 0; b < FZ_NBINDINGS; b++) {
            for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
                if (e != FZ_EPOCH_MIN && lens[l] > 100)
                    continue;
                for (size_t i = 0; i < lens[l]; i++)
                    pt[i] = fz_pattern(i, (unsigned)b);
                if (ks_rec_seal(key, fz_ksid, fz_bindings[b].kind, e, fz_bindings[b].token, fz_bindings[b].oid, pt,
                                lens[l], &rec, &reclen) != KS_OK)
                    die("ks_rec_seal");
                buf[0] = 0;
                memcpy(buf + 1, rec, reclen);
                snprintf(name, sizeof(name), "raw-e%u-b%zu-%zu", e, b, lens[l]);
                put("record", name, buf, reclen + 1);
                free(rec);
            }
        }
    }
    /* Seal then tamper: no edit, one bit flip, a truncation, another binding. */
    static const uint8_t progs[][12] = {
        {1, 0x00, 'h', 'e', 'l', 'l', 'o'},
        {1, 0x01, 0, 5, 0, 1, 'd', 'a', 't', 'a'},
        {1, 0x09, 2, 3, 0, 0, 'x', 'y', 'z'},
        {1, 0x42, 4, 0, 0, 0, 7, 0, 0, 1, 'k'},
        {1, 0x13, 1, 0, 0, 'Q', 'a', 'b', 'c', 'd', 'e', 'f'},
    };
    for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++) {
        size_t n = sizeof(progs[i]);
        while (n > 2 && progs[i][n - 1] == 0)
            n--;
        snprintf(name, sizeof(name), "tamper-%zu", i);
        put("record", name, progs[i], n);
    }
    OPENSSL_cleanse(key, sizeof(key));
}

/* ---- attrs ---------------------------------------------------------------- */

static void put_attrs(const char *name, const tok_attrs *a)
{
    uint8_t *b;
    size_t n;
    if (tok_attrs_serialize(a, &b, &n) != 0)
        die("tok_attrs_serialize");
    put("attrs", name, b, n);
    free(b);
}

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static const uint8_t oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t oid_ed25519[] = {0x06, 0x03, 0x2b, 0x65, 0x70};
static const uint8_t oid_x25519[] = {0x06, 0x03, 0x2b, 0x65, 0x6e};

static void keypair(const char *name, CK_MECHANISM_TYPE mt, const CK_ATTRIBUTE *pt, CK_ULONG pn)
{
    CK_MECHANISM m = {mt, NULL, 0};
    CK_KEY_TYPE kt;
    tok_attrs pub = TOK_ATTRS_INIT, priv = TOK_ATTRS_INIT;
    CK_ATTRIBUTE kt_priv[] = {{CKA_SENSITIVE, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_LABEL, "priv", 4}};
    char n[64];

    if (tok_mech_keypairgen_type(mt, &kt) != CKR_OK ||
        tok_policy_build(TOK_BUILD_GENERATE, CKO_PUBLIC_KEY, kt, mt, pt, pn, &pub) != CKR_OK ||
        tok_policy_build(TOK_BUILD_GENERATE, CKO_PRIVATE_KEY, kt, mt, kt_priv, 3, &priv) != CKR_OK ||
        tok_mech_generate_keypair(&m, &pub, &priv) != CKR_OK || tok_policy_finish(TOK_BUILD_GENERATE, &pub) ||
        tok_policy_finish(TOK_BUILD_GENERATE, &priv))
        die(name);
    snprintf(n, sizeof(n), "%s-pub", name);
    put_attrs(n, &pub);
    snprintf(n, sizeof(n), "%s-priv", name);
    put_attrs(n, &priv);
    tok_attrs_free(&pub);
    tok_attrs_free(&priv);
}

static void gen_attrs(void)
{
    CK_ULONG l32 = 32, l16 = 16, bits = 2048;
    CK_OBJECT_CLASS sec = CKO_SECRET_KEY, data = CKO_DATA, cert = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE x509 = CKC_X_509;
    CK_MECHANISM aes = {CKM_AES_KEY_GEN, NULL, 0};
    tok_attrs a = TOK_ATTRS_INIT;

    /* Secret keys, one with nested templates. */
    CK_ATTRIBUTE wt[] = {{CKA_CLASS, &sec, sizeof(sec)}, {CKA_EXTRACTABLE, &yes, 1}};
    CK_ATTRIBUTE ut[] = {{CKA_SENSITIVE, &yes, 1}, {CKA_LABEL, "unwrapped", 9}};
    CK_ATTRIBUTE st[] = {
        {CKA_VALUE_LEN, &l32, sizeof(l32)}, {CKA_LABEL, "aes", 3}, {CKA_SENSITIVE, &no, 1},
        {CKA_EXTRACTABLE, &yes, 1},         {CKA_WRAP_TEMPLATE, wt, sizeof(wt)},
        {CKA_UNWRAP_TEMPLATE, ut, sizeof(ut)},
    };
    if (tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, st, 6, &a) != CKR_OK ||
        tok_mech_generate_key(&aes, &a) != CKR_OK || tok_policy_finish(TOK_BUILD_GENERATE, &a) != CKR_OK)
        die("secret key");
    put_attrs("secret-aes-templates", &a);
    tok_attrs_free(&a);
    CK_ATTRIBUTE st2[] = {{CKA_VALUE_LEN, &l16, sizeof(l16)}, {CKA_SENSITIVE, &yes, 1}};
    if (tok_policy_build(TOK_BUILD_GENERATE, CKO_SECRET_KEY, CKK_AES, CKM_AES_KEY_GEN, st2, 2, &a) != CKR_OK ||
        tok_mech_generate_key(&aes, &a) != CKR_OK || tok_policy_finish(TOK_BUILD_GENERATE, &a) != CKR_OK)
        die("secret key");
    put_attrs("secret-aes128-sensitive", &a);
    tok_attrs_free(&a);

    CK_ATTRIBUTE ec[] = {{CKA_EC_PARAMS, (void *)oid_p256, sizeof(oid_p256)}, {CKA_LABEL, "ec", 2}};
    keypair("ec-p256", CKM_EC_KEY_PAIR_GEN, ec, 2);
    CK_ATTRIBUTE ed[] = {{CKA_EC_PARAMS, (void *)oid_ed25519, sizeof(oid_ed25519)}};
    keypair("ed25519", CKM_EC_EDWARDS_KEY_PAIR_GEN, ed, 1);
    CK_ATTRIBUTE x[] = {{CKA_EC_PARAMS, (void *)oid_x25519, sizeof(oid_x25519)}};
    keypair("x25519", CKM_EC_MONTGOMERY_KEY_PAIR_GEN, x, 1);
    CK_ATTRIBUTE rsa[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}};
    keypair("rsa2048", CKM_RSA_PKCS_KEY_PAIR_GEN, rsa, 1);

    CK_ATTRIBUTE d[] = {
        {CKA_CLASS, &data, sizeof(data)}, {CKA_LABEL, "data", 4}, {CKA_VALUE, "some value", 10},
        {CKA_APPLICATION, "app", 3},
    };
    if (tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE,
                         CK_UNAVAILABLE_INFORMATION, d, 4, &a) != CKR_OK)
        die("data object");
    put_attrs("data", &a);
    tok_attrs_free(&a);

    CK_ATTRIBUTE c[] = {
        {CKA_CLASS, &cert, sizeof(cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
        {CKA_SUBJECT, "\x30\x00", 2},     {CKA_VALUE, "\x30\x03\x02\x01\x01", 5},
        {CKA_ID, "\x01", 1},
    };
    if (tok_policy_build(TOK_BUILD_CREATE, TOK_CLASS_FROM_TEMPLATE, TOK_KTYPE_FROM_TEMPLATE,
                         CK_UNAVAILABLE_INFORMATION, c, 5, &a) != CKR_OK)
        die("certificate");
    put_attrs("certificate", &a);
    tok_attrs_free(&a);

    /* Small raw sets: empty, one of each value kind. */
    put_attrs("empty", &a);
    tok_attrs_set_ulong(&a, CKA_CLASS, CKO_SECRET_KEY);
    tok_attrs_set_bool(&a, CKA_TOKEN, true);
    tok_attrs_set(&a, CKA_LABEL, "l", 1);
    tok_attrs_set(&a, CKA_ID, NULL, 0);
    put_attrs("mixed", &a);
    tok_attrs_free(&a);
}

/* ---- config ---------------------------------------------------------------- */

static void put_config(const char *name, uint8_t ctl, const void *d, size_t n)
{
    uint8_t *b = malloc(n + 1);
    if (!b)
        die("malloc");
    b[0] = ctl;
    memcpy(b + 1, d, n);
    put("config", name, b, n + 1);
    free(b);
}

static void gen_config(void)
{
    static const char *confs[] = {
        "keystore = /tmp/p11mk-fuzz-ks\nmaster_key = default\nlog = stderr\nlog_level = debug\n"
        "key_file_mode = 0640\n",
        "# p11mk configuration\n\n  keystore=ks   # relative to this file\nmaster_key = ~/master.key\n"
        "log = syslog\nlog_level = warn\n",
        "keystore = ~/ks\nmaster_key = keys/master.key\nlog = p11mk.log\nlog_level = error\nkey_file_mode = 600\n",
        "log_level = info\n",
        "keystore = /x\nunknown_key = 1\n",
        "this line has no equals sign\n",
        "key_file_mode = 0200\n",
        "",
    };
    char name[64];
    for (size_t i = 0; i < sizeof(confs) / sizeof(confs[0]); i++) {
        snprintf(name, sizeof(name), "conf-%zu", i);
        put_config(name, 0, confs[i], strlen(confs[i]));
    }

    /* Registers written by ks_reg_save. */
    char tmp[] = "/tmp/p11mk-gen-seeds-XXXXXX", path[128];
    ks_registers r;
    ks_err err;
    if (!mkdtemp(tmp))
        die("mkdtemp");
    snprintf(path, sizeof(path), "%s/master.key", tmp);
    for (int v = 0; v < 4; v++) {
        memset(&r, 0, sizeof(r));
        for (int i = 0; i < KS_MK_LEN; i++)
            r.current.key[i] = (uint8_t)(i + v);
        if (v >= 1) {
            r.has_new = true;
            memset(r.staged.key, 0x11 * v, KS_MK_LEN);
        }
        for (size_t i = 0; v >= 2 && i < (v == 2 ? 2u : 20u); i++) {
            uint8_t k[KS_MK_LEN];
            memset(k, (int)(0x80 + i), KS_MK_LEN);
            if (ks_reg_insert_old(&r, r.n_old, k, (uint32_t)(40 - i), 1700000000u + i, i % 3 == 1) != KS_OK)
                die("ks_reg_insert_old");
        }
        if (ks_reg_save(path, &r, &err) != KS_OK)
            die(err.msg);
        ks_reg_clear(&r);
        FILE *f = fopen(path, "rb");
        uint8_t buf[8192];
        size_t n = f ? fread(buf, 1, sizeof(buf), f) : 0;
        if (!f)
            die(path);
        fclose(f);
        snprintf(name, sizeof(name), "registers-%d", v);
        put_config(name, 0, buf, n);
        unlink(path);
    }
    rmdir(tmp);
    /* The first format: 32 raw bytes; and the same with a mode the loader refuses. */
    uint8_t raw[KS_MK_LEN];
    for (int i = 0; i < KS_MK_LEN; i++)
        raw[i] = (uint8_t)(0xa0 + i);
    put_config("raw-key", 0, raw, sizeof(raw));
    put_config("raw-key-mode-0644", 3, raw, sizeof(raw));
}

/* ---- pkcs11 programs ---------------------------------------------------------- */

typedef struct {
    uint8_t b[8192];
    size_t n;
} prog;

static void B(prog *p, unsigned x)
{
    if (p->n >= sizeof(p->b))
        die("program too long");
    p->b[p->n++] = (uint8_t)x;
}
static void U16(prog *p, unsigned v)
{
    B(p, v & 0xff);
    B(p, (v >> 8) & 0xff);
}
static void U32(prog *p, uint32_t v)
{
    U16(p, v & 0xffff);
    U16(p, v >> 16);
}
static void U64(prog *p, uint64_t v)
{
    U32(p, (uint32_t)v);
    U32(p, (uint32_t)(v >> 32));
}
static void BYTES(prog *p, const void *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        B(p, d ? ((const uint8_t *)d)[i] : (uint8_t)(i * 7 + 3));
}

/* A mechanism with its default structured parameter (the decoder's choice 0s). */
static void MECH(prog *p, CK_MECHANISM_TYPE m)
{
    B(p, 0xff);
    U32(p, (uint32_t)m);
    B(p, 0); /* structured parameter */
    switch (m) {
    case CKM_AES_CBC:
    case CKM_AES_CBC_PAD:
        B(p, 0);
        BYTES(p, NULL, 16);
        break;
    case CKM_AES_CTR:
        B(p, 0);
        BYTES(p, NULL, 16);
        break;
    case CKM_AES_GCM:
        B(p, 0); /* iv 12 */
        B(p, 0);
        BYTES(p, NULL, 12);
        B(p, 1); /* aad 16 */
        B(p, 0);
        BYTES(p, NULL, 16);
        B(p, 0); /* tag 128 */
        break;
    case CKM_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
        B(p, 0), B(p, 0), B(p, 0); /* SHA256, MGF1-SHA256, salt 32 */
        break;
    case CKM_SHA1_RSA_PKCS_PSS:
        B(p, 1), B(p, 1), B(p, 2); /* SHA1, MGF1-SHA1, salt 20 */
        break;
    case CKM_SHA384_RSA_PKCS_PSS:
        B(p, 3), B(p, 3), B(p, 3); /* SHA384, MGF1-SHA384, salt 64 */
        break;
    case CKM_RSA_PKCS_OAEP:
        B(p, 0), B(p, 0), B(p, 0), B(p, 1); /* SHA256, MGF1-SHA256, data specified, no label */
        break;
    case CKM_SHA256_HMAC_GENERAL:
    case CKM_AES_CMAC_GENERAL:
        B(p, 0); /* 16 bytes */
        break;
    case CKM_EDDSA:
        B(p, 0);
        break;
    case CKM_ECDH1_DERIVE:
        B(p, 0), B(p, 1), B(p, 0); /* null KDF, no shared data, the P-256 public key */
        break;
    case 0x402A: /* HKDF */
        B(p, 0), B(p, 0), B(p, 0); /* extract+expand, SHA256, salt data */
        B(p, 0);
        BYTES(p, NULL, 16);
        B(p, 0); /* no salt key */
        B(p, 0);
        BYTES(p, NULL, 8);
        break;
    case CKM_PKCS5_PBKD2:
        B(p, 0); /* salt specified */
        B(p, 0);
        BYTES(p, NULL, 8);
        B(p, 0), B(p, 0), B(p, 0); /* 100 iterations, HMAC-SHA256, no PRF data */
        B(p, 0);
        BYTES(p, "password", 8);
        break;
    default: break;
    }
}

/* Template building: count first, then attributes. */
static void TMPL(prog *p, unsigned n) { B(p, n); }
static void A_BOOL(prog *p, CK_ATTRIBUTE_TYPE t, bool v)
{
    B(p, 0xff);
    U32(p, (uint32_t)t);
    B(p, FZ_V_TYPED);
    B(p, v ? 0 : 1);
}
static void A_ULONG(prog *p, CK_ATTRIBUTE_TYPE t, CK_ULONG v)
{
    B(p, 0xff);
    U32(p, (uint32_t)t);
    B(p, FZ_V_ULONG);
    U64(p, v);
}
static void A_BYTES(prog *p, CK_ATTRIBUTE_TYPE t, const void *d, size_t n)
{
    B(p, 0xff);
    U32(p, (uint32_t)t);
    B(p, FZ_V_BYTES);
    U16(p, (unsigned)n);
    BYTES(p, d, n);
}
static void A_MAT(prog *p, CK_ATTRIBUTE_TYPE t, unsigned idx)
{
    B(p, 0xff);
    U32(p, (uint32_t)t);
    B(p, FZ_V_MATERIAL);
    B(p, idx);
}
/* A nested template header (entries follow, as attributes). */
static void A_NESTED(prog *p, CK_ATTRIBUTE_TYPE t, unsigned n)
{
    B(p, 0xff);
    U32(p, (uint32_t)t);
    B(p, FZ_V_TYPED);
    B(p, n);
    B(p, 0);
}
static void DATA16(prog *p)
{
    B(p, 0);
    BYTES(p, NULL, 16);
}
static void DATA_N(prog *p, unsigned n)
{
    B(p, 11);
    U16(p, n);
    BYTES(p, NULL, n);
}

static int nprog;
static void emit(prog *p, const char *what)
{
    char name[96];
    snprintf(name, sizeof(name), "%03d-%s", nprog++, what);
    put("pkcs11", name, p->b, p->n);
    p->n = 0;
}

#define H(x) B(p, (x))
#define CREATED(k) B(p, FZ_H_BASE_COUNT + (k))

static void roundtrip(prog *p, bool sign, CK_MECHANISM_TYPE m, int h, unsigned datalen, const char *name)
{
    B(p, FZ_OP_ROUNDTRIP);
    B(p, sign ? 1 : 0);
    MECH(p, m);
    H(h);
    if (datalen == 16)
        DATA16(p);
    else
        DATA_N(p, datalen);
    B(p, 0); /* no tampering */
    emit(p, name);
}

static void gen_pkcs11(void)
{
    prog pp, *p = &pp;
    static const uint8_t p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
    pp.n = 0;

    /* Round trips: every cipher and signature mechanism with a key that fits. */
    roundtrip(p, false, CKM_AES_CBC_PAD, FZ_H_AES256, 100, "enc-aes-cbc-pad");
    roundtrip(p, false, CKM_AES_CBC, FZ_H_AES256, 64, "enc-aes-cbc");
    roundtrip(p, false, CKM_AES_ECB, FZ_H_AES256, 32, "enc-aes-ecb");
    roundtrip(p, false, CKM_AES_CTR, FZ_H_AES256, 100, "enc-aes-ctr");
    roundtrip(p, false, CKM_AES_GCM, FZ_H_AES256, 100, "enc-aes-gcm");
    roundtrip(p, false, CKM_AES_GCM, FZ_H_AES128_TMPL, 16, "enc-aes128-gcm");
    roundtrip(p, false, CKM_AES_CBC_PAD, FZ_H_TOKEN_AES, 16, "enc-token-aes");
    roundtrip(p, false, CKM_RSA_PKCS, FZ_H_RSA_PUB, 32, "enc-rsa-pkcs");
    roundtrip(p, false, CKM_RSA_PKCS_OAEP, FZ_H_RSA_PUB, 32, "enc-rsa-oaep");
    roundtrip(p, false, CKM_RSA_X_509, FZ_H_RSA_PUB, 256, "enc-rsa-x509");
    roundtrip(p, true, CKM_SHA256_HMAC, FZ_H_HMAC, 100, "sign-hmac-sha256");
    roundtrip(p, true, CKM_SHA_1_HMAC, FZ_H_HMAC, 16, "sign-hmac-sha1");
    roundtrip(p, true, CKM_SHA512_HMAC, FZ_H_HMAC, 16, "sign-hmac-sha512");
    roundtrip(p, true, CKM_SHA256_HMAC_GENERAL, FZ_H_HMAC, 16, "sign-hmac-general");
    roundtrip(p, true, 0x2B1 /* SHA3-256 HMAC */, FZ_H_HMAC, 16, "sign-hmac-sha3");
    roundtrip(p, true, CKM_AES_CMAC, FZ_H_AES256, 100, "sign-cmac");
    roundtrip(p, true, CKM_AES_CMAC_GENERAL, FZ_H_AES256, 16, "sign-cmac-general");
    roundtrip(p, true, CKM_ECDSA, FZ_H_EC_PRIV, 32, "sign-ecdsa");
    roundtrip(p, true, CKM_ECDSA_SHA256, FZ_H_EC_PRIV, 100, "sign-ecdsa-sha256");
    roundtrip(p, true, CKM_ECDSA_SHA384, FZ_H_EC_PRIV, 16, "sign-ecdsa-sha384");
    roundtrip(p, true, CKM_EDDSA, FZ_H_ED_PRIV, 100, "sign-eddsa");
    roundtrip(p, true, CKM_RSA_PKCS, FZ_H_RSA_PRIV, 32, "sign-rsa-pkcs");
    roundtrip(p, true, CKM_SHA256_RSA_PKCS, FZ_H_RSA_PRIV, 100, "sign-rsa-sha256");
    roundtrip(p, true, CKM_RSA_PKCS_PSS, FZ_H_RSA_PRIV, 32, "sign-rsa-pss");
    roundtrip(p, true, CKM_SHA1_RSA_PKCS_PSS, FZ_H_RSA_PRIV, 100, "sign-rsa-sha1-pss");
    roundtrip(p, true, CKM_SHA384_RSA_PKCS_PSS, FZ_H_RSA_PRIV, 100, "sign-rsa-sha384-pss");
    roundtrip(p, true, CKM_RSA_X_509, FZ_H_RSA_PRIV, 256, "sign-rsa-x509");

    /* Multi-part: encrypt update, update, final; digest; sign; verify. */
    B(p, FZ_OP_CRYPT), B(p, FZ_K_ENCRYPT);
    MECH(p, CKM_AES_CBC_PAD);
    H(FZ_H_AES256);
    B(p, 3);
    B(p, 1), DATA16(p), B(p, 0);
    B(p, 1), DATA_N(p, 5), B(p, 0);
    B(p, 2), B(p, 0);
    emit(p, "multi-encrypt");
    B(p, FZ_OP_CRYPT), B(p, FZ_K_DECRYPT);
    MECH(p, CKM_AES_GCM);
    H(FZ_H_AES256);
    B(p, 2);
    B(p, 1), DATA_N(p, 40), B(p, 0);
    B(p, 2), B(p, 0);
    emit(p, "multi-decrypt-gcm");
    B(p, FZ_OP_CRYPT), B(p, FZ_K_DIGEST);
    MECH(p, CKM_SHA256);
    B(p, 4);
    B(p, 1), DATA16(p), B(p, 0);
    B(p, 1), DATA16(p), B(p, 1), H(FZ_H_AES256); /* C_DigestKey */
    B(p, 2), B(p, 0);
    B(p, 0), DATA16(p), B(p, 0);
    emit(p, "multi-digest");
    B(p, FZ_OP_CRYPT), B(p, FZ_K_DIGEST);
    MECH(p, 0x2B0 /* SHA3-256 */);
    B(p, 1);
    B(p, 0), DATA_N(p, 200), B(p, 0);
    emit(p, "digest-sha3");
    B(p, FZ_OP_CRYPT), B(p, FZ_K_SIGN);
    MECH(p, CKM_ECDSA_SHA256);
    H(FZ_H_EC_PRIV);
    B(p, 3);
    B(p, 1), DATA16(p);
    B(p, 1), DATA16(p);
    B(p, 2), B(p, 2), B(p, 10); /* final into a short buffer */
    emit(p, "multi-sign-short");
    B(p, FZ_OP_CRYPT), B(p, FZ_K_VERIFY);
    MECH(p, CKM_SHA256_RSA_PKCS);
    H(FZ_H_RSA_PUB);
    B(p, 2);
    B(p, 1), DATA16(p);
    B(p, 2), DATA_N(p, 256);
    emit(p, "multi-verify");

    /* Key generation. */
    B(p, FZ_OP_GENKEY);
    MECH(p, CKM_AES_KEY_GEN);
    TMPL(p, 3), A_ULONG(p, CKA_VALUE_LEN, 16), A_BOOL(p, CKA_ENCRYPT, true), A_BYTES(p, CKA_LABEL, "gen", 3);
    B(p, FZ_OP_ROUNDTRIP), B(p, 0);
    MECH(p, CKM_AES_CBC_PAD);
    CREATED(0), DATA16(p), B(p, 0);
    emit(p, "genkey-aes");
    B(p, FZ_OP_GENKEY);
    MECH(p, CKM_GENERIC_SECRET_KEY_GEN);
    TMPL(p, 3), A_ULONG(p, CKA_VALUE_LEN, 48), A_BOOL(p, CKA_SIGN, true), A_BOOL(p, CKA_VERIFY, true);
    emit(p, "genkey-generic");
    B(p, FZ_OP_GENKEY);
    MECH(p, CKM_PKCS5_PBKD2);
    TMPL(p, 3), A_ULONG(p, CKA_VALUE_LEN, 32), A_ULONG(p, CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        A_BOOL(p, CKA_DERIVE, true);
    emit(p, "genkey-pbkdf2");
    B(p, FZ_OP_GENPAIR);
    MECH(p, CKM_EC_KEY_PAIR_GEN);
    TMPL(p, 2), A_BYTES(p, CKA_EC_PARAMS, p384, sizeof(p384)), A_BOOL(p, CKA_VERIFY, true);
    TMPL(p, 2), A_BOOL(p, CKA_SIGN, true), A_BOOL(p, CKA_DERIVE, true);
    B(p, FZ_OP_ROUNDTRIP), B(p, 1);
    MECH(p, CKM_ECDSA);
    CREATED(1), DATA16(p), B(p, 0);
    emit(p, "genpair-p384");
    B(p, FZ_OP_GENPAIR);
    MECH(p, CKM_EC_EDWARDS_KEY_PAIR_GEN);
    TMPL(p, 1), A_BYTES(p, CKA_EC_PARAMS, oid_ed25519, sizeof(oid_ed25519));
    TMPL(p, 1), A_BOOL(p, CKA_SIGN, true);
    emit(p, "genpair-ed25519");
    B(p, FZ_OP_GENPAIR);
    MECH(p, CKM_EC_MONTGOMERY_KEY_PAIR_GEN);
    TMPL(p, 1), A_BYTES(p, CKA_EC_PARAMS, oid_x25519, sizeof(oid_x25519));
    TMPL(p, 1), A_BOOL(p, CKA_DERIVE, true);
    emit(p, "genpair-x25519");

    /* Objects from material. */
    B(p, FZ_OP_CREATE);
    TMPL(p, 11), A_ULONG(p, CKA_CLASS, CKO_PRIVATE_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_RSA);
    A_MAT(p, CKA_MODULUS, 0), A_MAT(p, CKA_PUBLIC_EXPONENT, 0), A_MAT(p, CKA_PRIVATE_EXPONENT, 0);
    A_MAT(p, CKA_PRIME_1, 0), A_MAT(p, CKA_PRIME_2, 0), A_MAT(p, CKA_EXPONENT_1, 0), A_MAT(p, CKA_EXPONENT_2, 0);
    A_MAT(p, CKA_COEFFICIENT, 0), A_BOOL(p, CKA_SIGN, true);
    B(p, FZ_OP_ROUNDTRIP), B(p, 1);
    MECH(p, CKM_SHA256_RSA_PKCS);
    CREATED(0), DATA16(p), B(p, 0);
    emit(p, "create-rsa-private");
    B(p, FZ_OP_CREATE);
    TMPL(p, 4), A_ULONG(p, CKA_CLASS, CKO_PUBLIC_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_RSA);
    A_MAT(p, CKA_MODULUS, 0), A_MAT(p, CKA_PUBLIC_EXPONENT, 0);
    emit(p, "create-rsa-public");
    B(p, FZ_OP_CREATE);
    TMPL(p, 5), A_ULONG(p, CKA_CLASS, CKO_PRIVATE_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_EC);
    A_MAT(p, CKA_EC_PARAMS, 0), A_MAT(p, CKA_VALUE, 0), A_BOOL(p, CKA_DERIVE, true);
    B(p, FZ_OP_DERIVE);
    MECH(p, CKM_ECDH1_DERIVE);
    CREATED(0);
    TMPL(p, 3), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        A_BOOL(p, CKA_EXTRACTABLE, true);
    emit(p, "create-ec-private-derive");
    B(p, FZ_OP_CREATE);
    TMPL(p, 4), A_ULONG(p, CKA_CLASS, CKO_PUBLIC_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_EC);
    A_BYTES(p, CKA_EC_PARAMS, oid_p256, sizeof(oid_p256)), A_MAT(p, CKA_EC_POINT, 0);
    emit(p, "create-ec-public");
    B(p, FZ_OP_CREATE);
    TMPL(p, 4), A_ULONG(p, CKA_CLASS, CKO_PRIVATE_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_EC_EDWARDS);
    A_BYTES(p, CKA_EC_PARAMS, oid_ed25519, sizeof(oid_ed25519)), A_MAT(p, CKA_VALUE, 1);
    emit(p, "create-ed-private");
    B(p, FZ_OP_CREATE);
    TMPL(p, 7), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_AES);
    A_BYTES(p, CKA_VALUE, NULL, 32), A_BOOL(p, CKA_WRAP, true), A_BOOL(p, CKA_UNWRAP, true);
    A_NESTED(p, CKA_WRAP_TEMPLATE, 1), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY);
    A_NESTED(p, CKA_UNWRAP_TEMPLATE, 2), A_BOOL(p, CKA_SENSITIVE, false), A_BYTES(p, CKA_LABEL, "in", 2);
    B(p, FZ_OP_GETATTR3), CREATED(0), B(p, 3), B(p, 0), B(p, 0xff), U32(p, (uint32_t)CKA_WRAP_TEMPLATE), B(p, 0xff),
        U32(p, (uint32_t)CKA_UNWRAP_TEMPLATE), B(p, 0xff), U32(p, (uint32_t)CKA_VALUE);
    B(p, FZ_OP_WRAPUNWRAP);
    MECH(p, CKM_AES_KEY_WRAP_PAD);
    CREATED(0), H(FZ_H_HMAC);
    TMPL(p, 2), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_GENERIC_SECRET);
    B(p, 0);
    emit(p, "create-aes-templates");
    B(p, FZ_OP_CREATE);
    TMPL(p, 4), A_ULONG(p, CKA_CLASS, CKO_DATA), A_BYTES(p, CKA_LABEL, "d", 1), A_BYTES(p, CKA_VALUE, NULL, 40);
    A_BYTES(p, CKA_APPLICATION, "app", 3);
    B(p, FZ_OP_FIND), TMPL(p, 1), A_ULONG(p, CKA_CLASS, CKO_DATA), B(p, 8), B(p, 0);
    emit(p, "create-data-find");
    B(p, FZ_OP_CREATE);
    TMPL(p, 5), A_ULONG(p, CKA_CLASS, CKO_CERTIFICATE), A_ULONG(p, CKA_CERTIFICATE_TYPE, CKC_X_509);
    A_BYTES(p, CKA_SUBJECT, "\x30\x00", 2), A_BYTES(p, CKA_VALUE, "\x30\x03\x02\x01\x01", 5);
    A_BYTES(p, CKA_ID, "\x01", 1);
    emit(p, "create-certificate");

    /* Attributes of every base object. */
    for (int h = 0; h < FZ_H_BASE_COUNT; h++) {
        static const CK_ATTRIBUTE_TYPE ts[] = {CKA_CLASS, CKA_KEY_TYPE, CKA_VALUE, CKA_LABEL,
                                               CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_EC_POINT, CKA_MODULUS};
        char name[32];
        B(p, FZ_OP_GETATTR3), H(h), B(p, 8);
        B(p, 0);
        for (size_t i = 0; i < 8; i++)
            B(p, 0xff), U32(p, (uint32_t)ts[i]);
        B(p, FZ_OP_MISC), B(p, 0), H(h); /* object size */
        snprintf(name, sizeof(name), "getattr-%d", h);
        emit(p, name);
    }
    B(p, FZ_OP_GETATTR), H(FZ_H_AES128_TMPL), B(p, 4);
    /* an output array of 2 entries, each with an 8-byte buffer */
    B(p, 0xff), U32(p, (uint32_t)CKA_WRAP_TEMPLATE), B(p, 4), B(p, 2), B(p, 0);
    B(p, 0), B(p, 1), B(p, 8), B(p, 0), B(p, 1), B(p, 8);
    B(p, 0xff), U32(p, (uint32_t)CKA_CLASS), B(p, 1), B(p, 8);
    B(p, 0xff), U32(p, (uint32_t)CKA_EXTRACTABLE), B(p, 1), B(p, 1);
    B(p, 0xff), U32(p, (uint32_t)CKA_LABEL), B(p, 0), U32(p, 0);
    emit(p, "getattr-raw-nested");

    /* Copy, set, destroy. */
    B(p, FZ_OP_COPY), H(FZ_H_AES256), TMPL(p, 1), A_BYTES(p, CKA_LABEL, "copy", 4);
    B(p, FZ_OP_SETATTR), B(p, 0), TMPL(p, 2), A_BYTES(p, CKA_LABEL, "renamed", 7), A_BOOL(p, CKA_ENCRYPT, false);
    B(p, FZ_OP_SETATTR), B(p, 0), TMPL(p, 1), A_BOOL(p, CKA_SENSITIVE, true);
    B(p, FZ_OP_DESTROY), B(p, 0);
    emit(p, "copy-set-destroy");
    B(p, FZ_OP_COPY), H(FZ_H_TOKEN_AES), TMPL(p, 1), A_BOOL(p, CKA_EXTRACTABLE, false);
    emit(p, "copy-token-object");

    /* Find. */
    B(p, FZ_OP_FIND), TMPL(p, 1), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), B(p, 8), B(p, 0);
    B(p, FZ_OP_FIND), TMPL(p, 0), B(p, 3), B(p, 3); /* left active */
    B(p, FZ_OP_FIND), TMPL(p, 0), B(p, 3), B(p, 0);
    emit(p, "find");
    B(p, FZ_OP_FIND), TMPL(p, 2), A_BOOL(p, CKA_TOKEN, true), A_BYTES(p, CKA_LABEL, "token-aes", 9), B(p, 2),
        B(p, 0);
    emit(p, "find-token");

    /* Wrap and unwrap. */
    B(p, FZ_OP_WRAPUNWRAP);
    MECH(p, CKM_AES_KEY_WRAP);
    H(FZ_H_AES128_TMPL), H(FZ_H_AES256);
    TMPL(p, 3), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_AES), A_BOOL(p, CKA_DECRYPT, true);
    B(p, 0);
    emit(p, "wrap-aes-kw-templates");
    B(p, FZ_OP_WRAPUNWRAP);
    MECH(p, CKM_AES_KEY_WRAP_PAD);
    H(FZ_H_AES256), H(FZ_H_EC_PRIV);
    TMPL(p, 3), A_ULONG(p, CKA_CLASS, CKO_PRIVATE_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_EC), A_BOOL(p, CKA_SIGN, true);
    B(p, 0);
    emit(p, "wrap-ec-private");
    B(p, FZ_OP_WRAPUNWRAP);
    MECH(p, CKM_AES_KEY_WRAP_PAD);
    H(FZ_H_AES256), H(FZ_H_RSA_PRIV);
    TMPL(p, 2), A_ULONG(p, CKA_CLASS, CKO_PRIVATE_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_RSA);
    B(p, 0);
    emit(p, "wrap-rsa-private");
    B(p, FZ_OP_WRAPUNWRAP);
    MECH(p, CKM_RSA_PKCS);
    H(FZ_H_RSA_PUB), H(FZ_H_AES256);
    TMPL(p, 2), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_AES);
    B(p, 0);
    emit(p, "wrap-rsa-pkcs");
    B(p, FZ_OP_WRAPUNWRAP);
    MECH(p, CKM_RSA_PKCS_OAEP);
    H(FZ_H_RSA_PUB), H(FZ_H_HMAC);
    TMPL(p, 2), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_GENERIC_SECRET);
    B(p, 0);
    emit(p, "wrap-rsa-oaep");
    B(p, FZ_OP_WRAP);
    MECH(p, CKM_AES_KEY_WRAP);
    H(FZ_H_AES256), H(FZ_H_HMAC), B(p, 2), B(p, 8);
    emit(p, "wrap-short");
    B(p, FZ_OP_UNWRAP);
    MECH(p, CKM_AES_KEY_WRAP_PAD);
    H(FZ_H_AES128_TMPL);
    DATA_N(p, 40);
    TMPL(p, 2), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_GENERIC_SECRET);
    emit(p, "unwrap-garbage");

    /* Derivation. */
    B(p, FZ_OP_DERIVE);
    MECH(p, CKM_ECDH1_DERIVE);
    H(FZ_H_EC_PRIV);
    TMPL(p, 3), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_AES),
        A_ULONG(p, CKA_VALUE_LEN, 32);
    B(p, FZ_OP_ROUNDTRIP), B(p, 0);
    MECH(p, CKM_AES_GCM);
    CREATED(0), DATA16(p), B(p, 0);
    emit(p, "derive-ecdh");
    B(p, FZ_OP_DERIVE);
    B(p, 0xff), U32(p, CKM_ECDH1_DERIVE), B(p, 0), B(p, 1), B(p, 1), B(p, 2); /* SHA256 KDF, X25519 peer */
    H(FZ_H_X_PRIV);
    TMPL(p, 3), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        A_ULONG(p, CKA_VALUE_LEN, 48);
    emit(p, "derive-x25519-kdf");
    B(p, FZ_OP_DERIVE);
    MECH(p, 0x402A);
    H(FZ_H_HMAC);
    TMPL(p, 4), A_ULONG(p, CKA_CLASS, CKO_SECRET_KEY), A_ULONG(p, CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        A_ULONG(p, CKA_VALUE_LEN, 42), A_BOOL(p, CKA_SIGN, true);
    emit(p, "derive-hkdf");

    /* Misc. */
    B(p, FZ_OP_MISC), B(p, 1), U16(p, 64);
    B(p, FZ_OP_MISC), B(p, 2), DATA16(p);
    B(p, FZ_OP_MISC), B(p, 3), B(p, 0xff), U32(p, CKM_AES_GCM);
    B(p, FZ_OP_MISC), B(p, 4);
    B(p, FZ_OP_MISC), B(p, 5), H(FZ_H_AES256);
    emit(p, "misc");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR (normally tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    outdir = argv[1];
    mkdir_p(outdir);
    gen_record();
    gen_attrs();
    gen_config();
    gen_pkcs11();
    return 0;
}
