/* p11mk token layer: PIN hashing. PINs are never stored: only a salted
 * scrypt hash (EVP_KDF "SCRYPT") with its parameters, compared in constant
 * time. */
#ifndef P11MK_TOK_PIN_H
#define P11MK_TOK_PIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOK_API __attribute__((visibility("hidden")))

/* version(1) | log2N(1) | r(1) | p(1) | salt(16) | hash(32) */
#define TOK_PIN_REC_LEN 52
#define TOK_PIN_MIN_LEN 4
#define TOK_PIN_MAX_LEN 255

/* 0 on success, -1 on failure (no crash; rec untouched). */
TOK_API int tok_pin_hash(const uint8_t *pin, size_t len, uint8_t rec[TOK_PIN_REC_LEN]);
/* Constant-time compare of the recomputed hash; false on any malformed record. */
TOK_API bool tok_pin_verify(const uint8_t *pin, size_t len, const uint8_t rec[TOK_PIN_REC_LEN]);

#endif
