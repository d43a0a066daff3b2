/* Fuzz target: the sealed record format (keystore/ks_record.c).
 *
 * Byte 0, bit 0 clear: the rest is a record. It is opened under every
 * binding of fuzz_common.h with the record key of the epoch its header
 * names. A record that opens must be one the seed generator sealed, so its
 * plaintext must be fz_pattern(i, binding); anything else opening is an
 * authentication failure and aborts.
 *
 * Bit 0 set ("seal, then tamper"): byte 1 = number of edits (low 3 bits) and
 * a binding index, then 4 bytes per edit, then the plaintext. The plaintext is
 * sealed, the edits are applied to the record (or to the binding or key used
 * to open it), and it is opened again: it must open to exactly the plaintext
 * when nothing changed, and be refused otherwise. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keystore/ks_internal.h"
#include "fuzz_common.h"

static ks_mkey mk;
static uint8_t keys[FZ_EPOCH_MAX + 1][32];
static bool ready;
static unsigned long opened; /* raw records that opened (under their own key and binding) */

static void fail(const char *what, size_t len)
{
    fprintf(stderr, "fuzz_record: %s (record of %zu bytes)\n", what, len);
    abort();
}

static void setup(void)
{
    if (ready)
        return;
    memset(&mk, 0, sizeof(mk));
    memcpy(mk.key, fz_master_key, sizeof(mk.key));
    for (uint32_t e = 0; e <= FZ_EPOCH_MAX; e++)
        if (ks_rec_key(&mk, fz_ksid, e, keys[e]) != KS_OK)
            fail("ks_rec_key failed", 0);
    ready = true;
}

#ifdef FUZZ_TARGET
/* The deterministic driver (fuzz_main.c) runs the seed corpus first, and the
 * seeds are records gen_seeds.c sealed: if none opened, every check above
 * would hold vacuously (a changed key derivation or format would look like
 * a pass). */
static void seeds_opened(void)
{
    fprintf(stderr, "fuzz_record: %lu raw records opened\n", opened);
    if (!opened) {
        fprintf(stderr, "fuzz_record: no seed record opened: the corpus no longer matches the record format "
                        "(regenerate it with fuzz_gen_seeds, see README.md)\n");
        _exit(1);
    }
}
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setup();
#ifdef FUZZ_TARGET
    atexit(seeds_opened);
#endif
    return 0;
}

static void raw_record(const uint8_t *rec, size_t len)
{
    uint8_t kind = 0;
    uint32_t epoch = 0;
    int hrc = ks_rec_header(rec, len, &kind, &epoch);

    if (hrc != KS_OK && hrc != KS_ECORRUPT && hrc != KS_EVERSION)
        fail("ks_rec_header: unexpected error code", len);
    /* The key of the header's epoch (as the store picks it), and one wrong key. */
    const uint8_t *key = keys[epoch <= FZ_EPOCH_MAX ? epoch : 0];
    for (size_t b = 0; b < FZ_NBINDINGS; b++) {
        for (int wrong = 0; wrong < 2; wrong++) {
            uint8_t *pt = NULL;
            size_t ptlen = 0;
            int rc = ks_rec_open(wrong ? keys[0] : key, fz_ksid, fz_bindings[b].kind, fz_bindings[b].token,
                                 fz_bindings[b].oid, rec, len, &pt, &ptlen);
            if (rc != KS_OK) {
                if (rc != KS_ECORRUPT && rc != KS_EVERSION)
                    fail("ks_rec_open: unexpected error code", len);
                if (pt)
                    fail("ks_rec_open failed but returned a buffer", len);
                continue;
            }
            if (hrc != KS_OK)
                fail("ks_rec_open accepted a record whose header ks_rec_header refuses", len);
            if (wrong || epoch < FZ_EPOCH_MIN || epoch > FZ_EPOCH_MAX)
                fail("a record opened under a key it was not sealed with", len);
            if (ptlen != len - KS_REC_OVERHEAD)
                fail("plaintext length is not record length - overhead", len);
            for (size_t i = 0; i < ptlen; i++)
                if (pt[i] != fz_pattern(i, (unsigned)b))
                    fail("a modified record opened (authentication failure)", len);
            opened++;
            ks_buf_free(pt, ptlen);
        }
    }
}

/* Records sealed by seal_tamper use another keystore id than raw_record's,
 * so that libFuzzer (whose memcmp hooks learn their bytes) cannot feed them
 * back to raw_record, whose oracle holds that only gen_seeds.c plaintexts
 * open under fz_ksid. */
static uint8_t st_ksid[16];
static void seal_tamper(const uint8_t *d, size_t n)
{
    memcpy(st_ksid, fz_ksid, 16);
    st_ksid[15] ^= 0x80;
    uint8_t ctl = n > 1 ? d[1] : 0;
    size_t nedits = ctl & 7, b = (ctl >> 3) % FZ_NBINDINGS;
    const uint8_t *edits = d + (n > 2 ? 2 : n);
    size_t avail = n > 2 ? n - 2 : 0;
    uint32_t epoch = FZ_EPOCH_MIN + (ctl >> 6) % (FZ_EPOCH_MAX - FZ_EPOCH_MIN + 1);
    struct fz_binding bind = fz_bindings[b];
    const uint8_t *key = keys[epoch];
    uint8_t *rec = NULL, *pt = NULL;
    size_t reclen = 0, ptlen = 0;
    bool changed = false;

    if (avail < nedits * 4)
        nedits = avail / 4;
    const uint8_t *plain = edits + nedits * 4;
    size_t plainlen = avail - nedits * 4;

    if (ks_rec_seal(key, st_ksid, bind.kind, epoch, bind.token, bind.oid, plain, plainlen, &rec, &reclen) != KS_OK)
        fail("ks_rec_seal failed", plainlen);
    if (reclen != plainlen + KS_REC_OVERHEAD)
        fail("sealed record has the wrong length", reclen);
    /* Room to grow the record by edits. */
    size_t cap = reclen + 64;
    uint8_t *r = malloc(cap);
    if (!r)
        abort();
    memcpy(r, rec, reclen);
    size_t len = reclen;

    for (size_t i = 0; i < nedits; i++) {
        const uint8_t *e = edits + 4 * i;
        size_t pos = len ? ((size_t)e[1] | (size_t)e[2] << 8) % len : 0;
        switch (e[0] % 8) {
        case 0: /* flip bits of one byte (a zero mask changes nothing) */
            if (len)
                r[pos] ^= e[3];
            break;
        case 1: /* set a byte */
            if (len)
                r[pos] = e[3];
            break;
        case 2: /* truncate */
            len = pos;
            break;
        case 3: /* append */
            if (len < cap)
                r[len++] = e[3];
            break;
        case 4: /* another token */
            bind.token += 1 + e[3];
            break;
        case 5: /* another object id */
            bind.oid ^= (uint64_t)1 << (e[3] % 64);
            break;
        case 6: /* another kind */
            bind.kind = e[3] % 2 ? 'T' : 'M';
            break;
        default: /* another key */
            key = keys[(epoch + 1 + e[3] % FZ_EPOCH_MAX) % (FZ_EPOCH_MAX + 1)];
            break;
        }
    }
    changed = len != reclen || memcmp(r, rec, len) != 0 || bind.token != fz_bindings[b].token ||
              bind.oid != fz_bindings[b].oid || bind.kind != fz_bindings[b].kind || key != keys[epoch];

    int rc = ks_rec_open(key, st_ksid, bind.kind, bind.token, bind.oid, r, len, &pt, &ptlen);
    if (!changed) {
        if (rc != KS_OK)
            fail("an unmodified record does not open", len);
        if (ptlen != plainlen || (plainlen && memcmp(pt, plain, plainlen) != 0))
            fail("an unmodified record opens to another plaintext", len);
    } else if (rc == KS_OK) {
        fail("a modified record (or one opened under another binding or key) opened", len);
    } else if (rc != KS_ECORRUPT && rc != KS_EVERSION) {
        fail("ks_rec_open: unexpected error code", len);
    }
    if (rc == KS_OK)
        ks_buf_free(pt, ptlen);
    free(r);
    free(rec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size == 0 || (data[0] & 1) == 0)
        raw_record(size ? data + 1 : NULL, size ? size - 1 : 0);
    else
        seal_tamper(data, size);
    return 0;
}
