/* p11mk token layer: PIN records and the token key they unlock.
 *
 * PINs are never stored. One scrypt computation (EVP_KDF "SCRYPT", 64 bytes
 * out) of the PIN and a random salt gives both a verifier (the first 32
 * bytes, compared in constant time) and a key-encryption key (the last 32
 * bytes) under which the record keeps the token's key wrapped (AES-256-GCM,
 * bound to the token and the role). Record versions:
 *
 *   v1 (52 bytes, written before PINs bound private objects):
 *       1 | log2N | r | p | salt(16) | verifier(32)
 *   v2 (112 bytes):
 *       2 | log2N | r | p | salt(16) | verifier(32) | nonce(12) | wrapped key(32) | tag(16)
 *
 * scrypt's output is PBKDF2's, whose first block does not depend on the
 * output length: a v1 verifier equals the first half of the 64-byte
 * derivation, so a v1 record is upgraded at a login without a second scrypt. */
#ifndef P11MK_TOK_PIN_H
#define P11MK_TOK_PIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOK_API __attribute__((visibility("hidden")))

#define TOK_PIN_REC_V1_LEN 52
#define TOK_PIN_REC_LEN 112
#define TOK_PIN_MIN_LEN 4
#define TOK_PIN_MAX_LEN 255
#define TOK_TK_LEN 32  /* the token key */
#define TOK_TK_KCV_LEN 16

/* What one scrypt of a PIN gives: the record's parameters and salt, the
 * verifier and the key-encryption key. Secret: cleanse with tok_pin_key_clear. */
typedef struct {
    uint8_t params[4]; /* version, log2N, r, p */
    uint8_t salt[16];
    uint8_t verifier[32];
    uint8_t kek[32];
} tok_pin_key;

enum { TOK_PIN_OK = 0, TOK_PIN_WRONG = 1, TOK_PIN_BAD = -1 };

/* A new PIN: random salt, current parameters. 0, or -1 (no crash, k cleared). */
TOK_API int tok_pin_new(const uint8_t *pin, size_t len, tok_pin_key *k);
/* Check a PIN against a stored record (v1 or v2): TOK_PIN_OK (k filled),
 * TOK_PIN_WRONG, or TOK_PIN_BAD for a malformed record. Constant-time compare. */
TOK_API int tok_pin_check(const uint8_t *pin, size_t len, const uint8_t *rec, size_t rec_len, tok_pin_key *k);
/* A v2 record for k keeping tk wrapped for (token, role). 0 / -1. */
TOK_API int tok_pin_seal(const tok_pin_key *k, const uint8_t tk[TOK_TK_LEN], uint32_t token, unsigned role,
                         uint8_t rec[TOK_PIN_REC_LEN]);
/* The token key from a v2 record checked with tok_pin_check: 0 (tk filled),
 * 1 for a v1 record (it keeps no key), -1 when the wrapped key fails
 * authentication (the record was altered). */
TOK_API int tok_pin_unwrap(const tok_pin_key *k, const uint8_t *rec, size_t rec_len, uint32_t token, unsigned role,
                           uint8_t tk[TOK_TK_LEN]);
TOK_API void tok_pin_key_clear(tok_pin_key *k);
/* The token key's check value (stored with the token, compared at every
 * use of a key a PIN unwrapped or an SO handed on). */
TOK_API int tok_tk_kcv(const uint8_t tk[TOK_TK_LEN], uint8_t kcv[TOK_TK_KCV_LEN]);

#endif
