/* p11mk token layer: the two encodings of an ECDSA signature. PKCS#11 gives
 * and takes r || s, each number left-padded to the curve's field size;
 * OpenSSL makes and checks an ECDSA-Sig-Value, the DER SEQUENCE of two
 * INTEGERs (RFC 3279, 2.2.3). Converted here without OpenSSL's ECDSA_SIG
 * and BIGNUMs: r and s are public, and those calls (an allocation per
 * number, BN_bn2binpad's constant-time copy of every byte) cost an ECDSA
 * signature 3% of its time. The reading is strict DER: OpenSSL writes
 * nothing else, and what it is given to read came from OpenSSL. */
#include "tok_crypto.h"

#include <string.h>

/* A DER INTEGER holding a nonnegative number of fb bytes at most, at *p
 * (end: the end of the input); its value left-padded into out. */
static bool read_uint(const uint8_t **p, const uint8_t *end, size_t fb, uint8_t *out)
{
    const uint8_t *q = *p;
    size_t len;

    if (end - q < 2 || q[0] != 0x02 || q[1] & 0x80)
        return false;
    len = q[1];
    q += 2;
    if (len == 0 || (size_t)(end - q) < len || q[0] & 0x80 ||      /* empty, short, or negative */
        (len > 1 && q[0] == 0 && !(q[1] & 0x80)))                  /* a leading zero not needed */
        return false;
    *p = q + len;
    if (q[0] == 0 && len > 1)
        q++, len--;
    if (len > fb)
        return false;
    memset(out, 0, fb - len);
    memcpy(out + fb - len, q, len);
    return true;
}

bool tok_ecsig_to_raw(const uint8_t *der, size_t derlen, size_t fb, uint8_t *out)
{
    const uint8_t *p = der, *end = der + derlen;
    size_t len;

    if (derlen < 2 || p[0] != 0x30)
        return false;
    if (p[1] < 0x80) {
        len = p[1];
        p += 2;
    } else if (p[1] == 0x81 && derlen >= 3 && p[2] >= 0x80) {
        len = p[2];
        p += 3;
    } else {
        return false;
    }
    return (size_t)(end - p) == len && read_uint(&p, end, fb, out) && read_uint(&p, end, fb, out + fb) && p == end;
}

/* One number of fb bytes as a DER INTEGER at out; its length. */
static size_t write_uint(const uint8_t *v, size_t fb, uint8_t *out)
{
    size_t skip = 0, len, pad;

    while (skip + 1 < fb && v[skip] == 0)
        skip++;
    len = fb - skip;
    pad = v[skip] & 0x80 ? 1 : 0;
    out[0] = 0x02;
    out[1] = (uint8_t)(len + pad);
    out[2] = 0;
    memcpy(out + 2 + pad, v + skip, len);
    return 2 + pad + len;
}

size_t tok_ecsig_to_der(const uint8_t *raw, size_t fb, uint8_t out[TOK_ECSIG_DER_MAX])
{
    uint8_t body[TOK_ECSIG_DER_MAX];
    size_t n, h;

    if (fb == 0 || fb > TOK_ECSIG_FIELD_MAX)
        return 0;
    n = write_uint(raw, fb, body);
    n += write_uint(raw + fb, fb, body + n);
    out[0] = 0x30;
    if (n < 0x80) {
        out[1] = (uint8_t)n;
        h = 2;
    } else {
        out[1] = 0x81;
        out[2] = (uint8_t)n;
        h = 3;
    }
    memcpy(out + h, body, n);
    return h + n;
}
