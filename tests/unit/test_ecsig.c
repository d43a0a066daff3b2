/* The ECDSA signature codec (token/tok_ecsig.c), against OpenSSL's
 * ECDSA_SIG, which the module used before: for random r and s of every
 * field size the token has (32, 48, 66 bytes, and 28 for P-224's width),
 * with leading zero bytes, top bits set, and zero, the DER made is
 * OpenSSL's byte for byte and reads back as the same r || s, and OpenSSL's
 * DER reads as r || s. Malformed DER is refused: other tags, long or
 * indefinite lengths, a length past the end or short of it, trailing bytes,
 * negative numbers, unneeded leading zeros, numbers longer than the field,
 * empty INTEGERs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>

#include "token/tok_crypto.h"

static unsigned long rs = 0x2545f4914f6cdd1dUL;
static unsigned rnd(unsigned n)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (unsigned)(rs % n);
}

/* OpenSSL's DER of r || s; its length. */
static size_t ossl_der(const uint8_t *raw, size_t fb, uint8_t *out)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, (int)fb, NULL), *s = BN_bin2bn(raw + fb, (int)fb, NULL);
    unsigned char *p = out;
    assert_non_null(sig);
    assert_int_equal(ECDSA_SIG_set0(sig, r, s), 1);
    int n = i2d_ECDSA_SIG(sig, &p);
    ECDSA_SIG_free(sig);
    assert_true(n > 0 && n <= TOK_ECSIG_DER_MAX);
    return (size_t)n;
}

static void number(uint8_t *v, size_t fb)
{
    switch (rnd(6)) {
    case 0: memset(v, 0, fb); break;                  /* zero */
    case 1: memset(v, 0, fb), v[fb - 1] = (uint8_t)rnd(256); break;
    case 2: /* leading zero bytes, then maybe a top bit */
        for (size_t i = 0, z = rnd((unsigned)fb); i < fb; i++)
            v[i] = i < z ? 0 : (uint8_t)rnd(256);
        break;
    case 3: /* top bit set: DER needs a zero before it */
        for (size_t i = 0; i < fb; i++)
            v[i] = (uint8_t)rnd(256);
        v[0] |= 0x80;
        break;
    case 4: memset(v, 0xff, fb); break;
    default:
        for (size_t i = 0; i < fb; i++)
            v[i] = (uint8_t)rnd(256);
        break;
    }
}

static void test_matches_openssl(void **state)
{
    (void)state;
    static const size_t sizes[] = {28, 32, 48, 66, 1};
    uint8_t raw[2 * TOK_ECSIG_FIELD_MAX], back[2 * TOK_ECSIG_FIELD_MAX], der[TOK_ECSIG_DER_MAX],
        want[TOK_ECSIG_DER_MAX];

    for (int i = 0; i < 20000; i++) {
        size_t fb = sizes[rnd(5)];
        number(raw, fb);
        number(raw + fb, fb);
        size_t n = tok_ecsig_to_der(raw, fb, der), w = ossl_der(raw, fb, want);
        assert_int_equal(n, w);
        assert_memory_equal(der, want, n);
        memset(back, 0xee, sizeof(back));
        assert_true(tok_ecsig_to_raw(want, w, fb, back));
        assert_memory_equal(back, raw, 2 * fb);
    }
    assert_int_equal(tok_ecsig_to_der(raw, 0, der), 0);
    assert_int_equal(tok_ecsig_to_der(raw, TOK_ECSIG_FIELD_MAX + 1, der), 0);
}

static bool reads(const uint8_t *der, size_t n, size_t fb)
{
    uint8_t out[2 * TOK_ECSIG_FIELD_MAX];
    return tok_ecsig_to_raw(der, n, fb, out);
}

static void test_refuses_malformed(void **state)
{
    (void)state;
    /* r = 1, s = 0x80 (needs its zero): the good one, then its faults */
    static const uint8_t good[] = {0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80};
    assert_true(reads(good, sizeof(good), 32));
    assert_false(reads(good, sizeof(good), 0));     /* a number longer than the field */
    assert_true(reads(good, sizeof(good), 1));      /* 0x80 fits one byte once its zero goes */
    assert_false(reads(good, sizeof(good) - 1, 32)); /* short */
    assert_false(reads(good, 0, 32));
    assert_false(reads(good, 1, 32));
    uint8_t b[16];
#define BAD(...)                                                                                                       \
    do {                                                                                                               \
        const uint8_t v[] = {__VA_ARGS__};                                                                             \
        assert_false(reads(v, sizeof(v), 32));                                                                         \
    } while (0)
    BAD(0x31, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80);             /* a SET */
    BAD(0x30, 0x08, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80);             /* length past the end */
    BAD(0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80);             /* length short of it */
    BAD(0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80, 0x00);       /* trailing byte */
    BAD(0x30, 0x81, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80);       /* long form for a short length */
    BAD(0x30, 0x80, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80, 0x00, 0x00); /* indefinite */
    BAD(0x30, 0x82, 0x00, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80); /* two length bytes */
    BAD(0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x80);                   /* s negative */
    BAD(0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01);             /* r's zero not needed */
    BAD(0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x01);                         /* r empty */
    BAD(0x30, 0x06, 0x04, 0x01, 0x01, 0x02, 0x01, 0x01);                   /* r an OCTET STRING */
    BAD(0x30, 0x03, 0x02, 0x01, 0x01);                                     /* no s */
    BAD(0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01); /* three numbers */
    BAD(0x30, 0x06, 0x02, 0x81, 0x01, 0x01, 0x02, 0x01);                   /* an INTEGER's long length */
    /* 33 bytes of r for a 32-byte field (no zero needed for it) */
    uint8_t big[3 + 2 + 33 + 3];
    big[0] = 0x30, big[1] = (uint8_t)(2 + 33 + 3), big[2] = 0x02, big[3] = 33;
    memset(big + 4, 0x11, 33);
    big[37] = 0x02, big[38] = 0x01, big[39] = 0x01;
    assert_false(reads(big, 40, 32));
    assert_true(reads(big, 40, 33));
    /* Random bytes: never more than what OpenSSL reads */
    for (int i = 0; i < 200000; i++) {
        size_t n = 1 + rnd(sizeof(b));
        for (size_t j = 0; j < n; j++)
            b[j] = (uint8_t)rnd(256);
        if (rnd(2))
            b[0] = 0x30, b[1] = (uint8_t)(n - 2);
        const unsigned char *p = b;
        ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)n);
        bool ossl = sig && p == b + n;
        ECDSA_SIG_free(sig);
        if (reads(b, n, 4))
            assert_true(ossl);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_openssl),
        cmocka_unit_test(test_refuses_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
