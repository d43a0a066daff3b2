/* p11mk keystore, for tests only: raw access to a keystore's stored records,
 * under the keystore layer and its sealing, so that a test can edit, delete,
 * replay or add records the way an attacker with the files (or a damaged
 * disk) would, and check that the keystore notices.
 *
 * It is compiled into its own static library (p11mk-ks-tamper) that only
 * the tests link: neither the module nor p11mk-admin has it. Nothing here
 * names the storage engine: a backend implements it over its own tables.
 *
 * The stored layout it exposes is the keystore's record layout, not an
 * engine's: four tables and the keys of their records.
 *   KS_TAMPER_META     "meta":    keys are short names, some with a suffix
 *                                  ("format", "state", "gen", "ksid",
 *                                  "kcv" + epoch BE32, ...)
 *   KS_TAMPER_TOKENS   "tokens":  token id BE32 (ks_tamper_token_key)
 *   KS_TAMPER_OBJECTS  "objects": token id BE32 | object id BE64
 *                                  (ks_tamper_object_key)
 *   KS_TAMPER_INDEX    "index":   keyed index entries; a key holds one
 *                                  value (object id BE64) per object it
 *                                  points at
 * Values are the records as stored (sealed records, or the plain counters
 * some meta keys hold).
 *
 * The contract:
 * - One handle is one transaction over the keystore in a directory: what
 *   it reads is one snapshot, and what it writes appears to others all at
 *   once at ks_tamper_commit, or never (ks_tamper_abort).
 * - The keystore must not be open in this process while a handle is (no
 *   ks_store, no module between C_Initialize and C_Finalize on it): close it
 *   first, reopen it after. Other processes may have it open.
 * - A handle never creates a keystore or a table: a table that does not
 *   exist (dropped) stays so, and is KS_ENOTFOUND to every call naming it.
 * - Return codes are exactly those listed with each call, and these common
 *   ones: KS_EINVAL for a NULL handle or pointer argument, or a table name
 *   other than the four above; for every call that writes, KS_EROFS on a
 *   handle opened with KS_TAMPER_RDONLY, KS_ENOSPC when the keystore's
 *   space is full and KS_ENOMEM; and KS_EIO for any other failure of the
 *   storage engine (after a failed write, only ks_tamper_abort is of use).
 */
#ifndef P11MK_KS_TAMPER_H
#define P11MK_KS_TAMPER_H

#include <stddef.h>
#include <stdint.h>

#include "keystore/ks.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KS_TAMPER_META "meta"
#define KS_TAMPER_TOKENS "tokens"
#define KS_TAMPER_OBJECTS "objects"
#define KS_TAMPER_INDEX "index"

#define KS_TAMPER_TOKEN_KEY_LEN 4
#define KS_TAMPER_OBJECT_KEY_LEN 12
/* The key of a token's record, and of an object's record. */
KS_API void ks_tamper_token_key(uint8_t key[KS_TAMPER_TOKEN_KEY_LEN], uint32_t token);
KS_API void ks_tamper_object_key(uint8_t key[KS_TAMPER_OBJECT_KEY_LEN], uint32_t token, uint64_t oid);

typedef struct ks_tamper ks_tamper;

enum {
    KS_TAMPER_RDONLY = 1u << 0, /* read only: no write call succeeds; commit writes nothing */
};

/* Open the keystore in `dir` and begin the transaction. KS_OK (*out set);
 * KS_ENOTFOUND (no keystore in dir: nothing is created); KS_EPERM (this user
 * may not read it, or may not write it without KS_TAMPER_RDONLY); KS_EINVAL
 * (NULL arguments, unknown flags); KS_ENOMEM; KS_EIO. */
KS_API int ks_tamper_open(const char *dir, unsigned flags, ks_tamper **out);

/* A copy of the value stored under key (*val malloc'd, free() it; for the
 * index, the first of the key's values). KS_OK; KS_ENOTFOUND (no such key,
 * or no such table); KS_ENOMEM. */
KS_API int ks_tamper_get(ks_tamper *t, const char *table, const void *key, size_t klen, uint8_t **val, size_t *vlen);
/* Store val under key, replacing what was there (in the index: adding a
 * value to the key's). KS_OK; KS_ENOTFOUND (no such table); KS_EINVAL (an
 * empty key, or a key or value the backend cannot store); KS_EROFS. */
KS_API int ks_tamper_put(ks_tamper *t, const char *table, const void *key, size_t klen, const void *val, size_t vlen);
/* Delete the record stored under key (in the index: every value of the
 * key). KS_OK; KS_ENOTFOUND (no such key, or no such table); KS_EROFS. */
KS_API int ks_tamper_del(ks_tamper *t, const char *table, const void *key, size_t klen);
/* Delete a whole table: its records and the table itself. KS_OK;
 * KS_ENOTFOUND (no such table); KS_EROFS. */
KS_API int ks_tamper_drop(ks_tamper *t, const char *table);
/* The number of records (index: values) in a table. KS_OK; KS_ENOTFOUND
 * (no such table: this is how a test sees that a dropped table stayed
 * dropped). */
KS_API int ks_tamper_count(ks_tamper *t, const char *table, uint64_t *n);

/* What a ks_tamper_foreach callback asks for. */
enum {
    KS_TAMPER_NEXT = 0,   /* go on */
    KS_TAMPER_DELETE = 1, /* delete this record (index: this one value) and go on */
    KS_TAMPER_STOP = 2,   /* stop here */
};
typedef int (*ks_tamper_cb)(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, void *arg);
/* Call cb for every record of a table in key order (the index: for every
 * value of every key, in value order), with views valid during the call
 * only. Deletions asked for are made after the walk, before the call
 * returns. KS_OK (the walk ended or was stopped); KS_ENOTFOUND (no such
 * table); KS_EINVAL (cb returned something else: nothing was deleted);
 * KS_EROFS (KS_TAMPER_DELETE on a read-only handle: nothing was deleted);
 * KS_ENOMEM. */
KS_API int ks_tamper_foreach(ks_tamper *t, const char *table, ks_tamper_cb cb, void *arg);

/* XOR mask into byte `at` of an object's stored record: from its start when
 * at >= 0, from its end when at < 0 (-1 is the last byte). KS_OK;
 * KS_ENOTFOUND (no such object, or no objects table); KS_EINVAL (mask 0, or
 * `at` outside the record); KS_EROFS; KS_ENOMEM. */
KS_API int ks_tamper_flip_object(ks_tamper *t, uint32_t token, uint64_t oid, long at, uint8_t mask);

/* End the transaction and close the handle (t is freed in every case).
 * commit: KS_OK (every change is stored; on a read-only handle, nothing
 * was to be); KS_ENOSPC (the file system or the keystore's space is full:
 * nothing was stored); KS_EIO (nothing was stored). abort: nothing is
 * stored. Both accept NULL (commit: KS_EINVAL). */
KS_API int ks_tamper_commit(ks_tamper *t);
KS_API void ks_tamper_abort(ks_tamper *t);

#ifdef __cplusplus
}
#endif
#endif
