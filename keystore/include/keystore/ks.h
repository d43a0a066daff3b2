/* p11mk keystore: LMDB storage, sealed record format, master keys, epochs.
 *
 * This layer knows nothing about PKCS#11 sessions or attributes: it stores
 * opaque plaintext blobs for "tokens" and "objects", seals every one of them
 * with AES-256-GCM under a key derived from the master key of the epoch it is
 * written in, and maintains keyed attribute indexes (attribute "types" are
 * opaque 32-bit numbers here).
 *
 * Errors are KS_* codes (negative), every code has a string (ks_strerror).
 * Functions that can fail for a reason a person must act on also fill a
 * caller-supplied ks_err buffer with a full sentence.
 */
#ifndef P11MK_KS_H
#define P11MK_KS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KS_API __attribute__((visibility("hidden")))

/* ---- errors ------------------------------------------------------------ */
enum {
    KS_OK = 0,
    KS_ENOTFOUND = -1,   /* no such record / token */
    KS_EIO = -2,         /* filesystem or LMDB failure */
    KS_ECORRUPT = -3,    /* record failed authentication or is malformed */
    KS_EWRONGKEY = -4,   /* master key's check value does not match the keystore */
    KS_ENOMEM = -5,
    KS_EPERM = -6,       /* key file / directory permissions refused */
    KS_EINVAL = -7,      /* bad argument */
    KS_ECONFIG = -8,     /* malformed configuration */
    KS_EEXIST = -9,      /* already exists */
    KS_EVERSION = -10,   /* unsupported keystore format version */
    KS_ENOKEY = -11,     /* the key for a record's epoch is not available */
    KS_EROFS = -12,      /* keystore is read-only */
    KS_EBUSY = -13,      /* locked by another process */
    KS_ESTATE = -14,     /* the rotation state does not allow this step */
    KS_ECHANGED = -15,   /* the state changed since the caller looked (nothing written) */
    KS_ENOSPC = -16,     /* the file system is full */
    KS_EBADFILE = -17,   /* a file given (a copy to restore) is not usable: missing, not a regular file, not a
                            complete keystore copy, or damaged */
};

/* A read that has handed nothing out yet (an open's, a count, a report) is
 * run again from a new transaction when the storage failed it with KS_EIO (a
 * connection lost on the way, that the backend could not take up): this
 * many times in all. A new snapshot is as good as the first for it. */
#define KS_READ_TRIES 3

/* A read's result that says nothing about the data: not an answer (not
 * found, failed authentication, sealed under a key not here, a format not
 * read here) but a failure to read at all (an I/O error, a lost database
 * connection, out of memory). It is passed on as it is: never taken for a
 * missing record, never reported as damage, never a reason to change
 * anything. */
static inline bool ks_read_failed(int rc)
{
    return rc != KS_OK && rc != KS_ENOTFOUND && rc != KS_ECORRUPT && rc != KS_EWRONGKEY && rc != KS_ENOKEY &&
           rc != KS_EVERSION;
}

/* What to do after such a failed read, for messages: out of memory is not
 * the storage's fault. */
static inline const char *ks_read_advice(int rc)
{
    return rc == KS_ENOMEM ? "try again when the system has memory to spare"
                           : "try again, and check the keystore's storage (its disk, or its database connection)";
}

KS_API const char *ks_strerror(int err);

/* Where a failure happened, for callers that act on it (the admin's exit
 * codes): the configuration functions (ks_config_*) set KS_AREA_CONFIG, the
 * key-file functions (ks_mkey_load, ks_mkey_generate_file, ks_reg_load,
 * ks_reg_save, and the steps that call them) KS_AREA_KEY; anything else is
 * the keystore's. Pass a zeroed ks_err to each call; ks_open resets it. */
typedef enum {
    KS_AREA_KEYSTORE = 0,
    KS_AREA_CONFIG,
    KS_AREA_KEY,
} ks_area;

/* A failure's sentence (what happened and what to do; may be empty) and area. */
typedef struct {
    char msg[1024];
    ks_area area;
} ks_err;
#define KS_ERR_INIT {{0}, KS_AREA_KEYSTORE}
KS_API void ks_err_set(ks_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- logging (used by every layer) ------------------------------------- */
enum { KS_LOG_ERROR = 0, KS_LOG_WARN = 1, KS_LOG_INFO = 2, KS_LOG_DEBUG = 3 };
/* dest: NULL or "syslog" -> syslog(3); "stderr"; otherwise a file path (appended). */
KS_API void ks_log_setup(const char *dest, int level, const char *ident);
KS_API void ks_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
KS_API int ks_log_level_parse(const char *s); /* "error".."debug"; -1 if unknown */

/* ---- configuration ----------------------------------------------------- */
/* Lookup order: $P11MK_CONF, else $XDG_CONFIG_HOME/p11mk/p11mk.conf (or
 * ~/.config/p11mk/p11mk.conf), else /etc/p11mk/p11mk.conf, else embedded
 * defaults. File format: "key = value" lines, '#' comments, blank lines.
 * Keys: keystore (directory), backend (the storage: lmdb or postgresql; default lmdb),
 *       host_name (this host's name among the hosts sharing a keystore; default: the system's host name),
 *       postgresql (with backend = postgresql: the libpq connection string of the keystore's database;
 *                   credentials from libpq's usual places; a password in it only in a file only its owner reads),
 *       master_key ("default" or a key file path),
 *       log (syslog | stderr | /path/file), log_level (error|warn|info|debug),
 *       key_file_mode (octal, most permissive mode accepted for key files, default 0600),
 *       rsa_min_bits (the smallest RSA key C_GenerateKeyPair makes, 1024..8192, default 2048),
 *       wrap_policy (default | strict: the token's key-management rules, see tok_access.h),
 *       secure_heap (KiB of OpenSSL's secure heap the module sets up when the process has none:
 *                    0 or a power of two 64..65536, default KS_SECURE_HEAP_DEFAULT_KIB; see ks_secmem.c),
 *       legacy_mechanisms (no | yes: single DES and MD5, from OpenSSL's legacy provider; default no).
 * Unknown keys and malformed lines are errors naming file, line and key. */
typedef struct {
    char *source;        /* config file used, or NULL for embedded defaults */
    char *keystore;      /* keystore directory */
    char *backend;       /* backend = (one built in, see ks_backend_find); NULL: not set, lmdb */
    char *postgresql;    /* postgresql = libpq connection string; NULL: not set */
    char *host_name;     /* host_name = this host's name in a shared keystore's fleet; NULL: gethostname() */
    char *master_key;    /* "default" or a path */
    char *log;           /* NULL -> syslog for the module, stderr for admin */
    int log_level;       /* KS_LOG_* */
    unsigned key_file_mode; /* default 0600 */
    unsigned rsa_min_bits;  /* default 2048 */
    bool wrap_strict;       /* wrap_policy = strict */
    unsigned secure_heap_kib; /* 0: leave OpenSSL's secure heap alone */
    bool legacy_mechanisms; /* legacy_mechanisms = yes */
} ks_config;
/* Off by default: OpenSSL's secure heap has one lock that a fork() child
 * inherits locked when another thread of the parent held it, and OpenSSL
 * never resets it, so a multi-threaded application that forks could hang in
 * the child (ks_secmem.c). */
#define KS_SECURE_HEAP_DEFAULT_KIB 0u

KS_API int ks_config_load(ks_config *cfg, ks_err *err);
KS_API int ks_config_load_file(ks_config *cfg, const char *path, ks_err *err);
KS_API void ks_config_defaults(ks_config *cfg); /* embedded defaults only */
KS_API void ks_config_free(ks_config *cfg);
/* Default per-user keystore dir: $XDG_DATA_HOME/p11mk or ~/.local/share/p11mk */
KS_API char *ks_default_keystore_dir(void);
/* The per-user configuration file: $XDG_CONFIG_HOME/p11mk/p11mk.conf or ~/.config/p11mk/p11mk.conf (malloc'd). */
KS_API char *ks_user_config_path(void);
/* mkdir -p with mode 0700: the directories above path, and path itself when
 * `last`; 0 or -1 (errno of the last mkdir). */
KS_API int ks_mkdir_p(const char *path, bool last);
/* The configuration file cfg came from, or, for embedded defaults, the
 * per-user one p11mk-admin writes when it gives the keystore a key file
 * (malloc'd; NULL if there is no home directory to name one). */
KS_API char *ks_config_home(const ks_config *cfg);
/* Make the configuration file `conf` name `keyfile` as master_key, atomically
 * (temporary file, fsync, rename; other lines kept). A configuration that does
 * not exist yet is created naming `keystore` too. */
KS_API int ks_config_write_master_key(const char *conf, const char *keyfile, const char *keystore, ks_err *err);

/* ---- master key -------------------------------------------------------- */
#define KS_MK_LEN 32
#define KS_KCV_LEN 8
typedef struct {
    uint8_t key[KS_MK_LEN];
    bool is_default;      /* the embedded, well-known key */
    char source[4096];    /* "default" or key file path, for messages */
    unsigned file_mode;   /* most permissive mode accepted for the key file (0: 0600) */
    char config[4096];    /* the configuration file that names this key, or would once p11mk-admin gives the
                             keystore a key file (ks_config_home; empty: none). A keystore opened with this key
                             re-reads that file, and no other, to learn of a key file named later. */
} ks_mkey;

/* Load the master key named by cfg->master_key. Key files: exactly 32 raw
 * bytes; refused (KS_EPERM) if their mode grants more than key_file_mode. */
KS_API int ks_mkey_load(const ks_config *cfg, ks_mkey *mk, ks_err *err);
KS_API void ks_mkey_default(ks_mkey *mk);
/* Create a new random key file (mode 0600, O_EXCL). */
KS_API int ks_mkey_generate_file(const char *path, ks_mkey *mk, ks_err *err);
/* Key check value: identifies a master key without revealing it. */
KS_API void ks_mkey_kcv(const ks_mkey *mk, uint8_t kcv[KS_KCV_LEN]);
KS_API void ks_kcv_hex(const uint8_t kcv[KS_KCV_LEN], char out[2 * KS_KCV_LEN + 1]);
/* n bytes as 2n lowercase hex digits and a NUL (out: 2n + 1 bytes). */
KS_API void ks_hex(const uint8_t *in, size_t n, char *out);
KS_API void ks_mkey_clear(ks_mkey *mk); /* OPENSSL_cleanse */

/* A master key typed by a person: scrypt (N=2^15, r=8, p=1) of the
 * passphrase with a fixed, versioned domain salt, so the same passphrase
 * gives the same key on every host. */
#define KS_PASS_MIN 12
KS_API int ks_mkey_from_passphrase(const char *pass, size_t len, ks_mkey *mk);
/* Split knowledge: the key is the XOR of scrypt(part i, salt "...part v1/i"),
 * so that any n-1 of the n parts say nothing about it. */
#define KS_PARTS_MAX 9
KS_API int ks_mkey_from_parts(const char *const *parts, size_t n, ks_mkey *mk);
/* A generated key: 32 bytes of the random generator (never shown, kept only
 * in the key file). KS_OK, KS_EINVAL, or KS_EIO when the generator fails. */
KS_API int ks_mkey_generate(ks_mkey *mk);

/* ---- master-key registers (the key file) -------------------------------- */
/* A key file holds the registers: CURRENT, optionally NEW (staged), and the
 * retired keys (history, newest first, no size limit). A file of exactly 32
 * raw bytes (the first format) is CURRENT alone. The keystore matches keys
 * to epochs by their check values, so register roles only order them. Only
 * the lifecycle functions below write a key file, under the keystore's
 * lifecycle lock. */
typedef struct {
    uint8_t key[KS_MK_LEN];
    uint8_t kcv[KS_KCV_LEN];
    uint32_t epoch;      /* the epoch it sealed (0: unknown, a version 1 file) */
    uint64_t retired;    /* unix time it left CURRENT or NEW (0: unknown) */
    bool aborted;        /* a NEW key withdrawn by abort (it sealed records only while staged) */
} ks_histkey;
typedef struct {
    ks_mkey current;
    bool has_new;
    ks_mkey staged;
    size_t n_old, cap_old;
    ks_histkey *old;     /* newest first; memory excluded from core dumps; ks_reg_clear frees it */
    bool has_owner;      /* the file names the keystore it serves (files written before 2026-12 do not) */
    uint8_t owner[16];   /* that keystore's id (ks_info.keystore_id) */
    bool has_made_for;   /* a new file an adoption made (ks_lifecycle.c), until the first save: */
    uint8_t made_for[16]; /* the place it was made for (SHA-256 of the keystore directory's real path) */
} ks_registers;
/* Fills a zeroed *r (anything it held is not freed: clear it first).
 * KS_ENOTFOUND, KS_EPERM (mode wider than allowed_mode), KS_EINVAL
 * (damaged, truncated, not a regular file, a symbolic link), KS_ENOMEM. */
KS_API int ks_reg_load(const char *path, unsigned allowed_mode, ks_registers *r, ks_err *err);
/* Atomic: FILE.tmp (owner, group and mode of the file it replaces), fsync,
 * rename, fsync of the directory. KS_EIO, KS_ENOSPC, KS_ENOMEM. */
KS_API int ks_reg_save(const char *path, const ks_registers *r, ks_err *err);
/* A new key file: as ks_reg_save, but never over a file already at path
 * (KS_EEXIST: another writer made it first). */
KS_API int ks_reg_create(const char *path, const ks_registers *r, ks_err *err);
KS_API void ks_reg_clear(ks_registers *r);
/* History edits: insert at position `at` (0 = newest), remove entry i. */
KS_API int ks_reg_insert_old(ks_registers *r, size_t at, const uint8_t key[KS_MK_LEN], uint32_t epoch,
                             uint64_t retired, bool aborted);
KS_API void ks_reg_remove_old(ks_registers *r, size_t i);
/* Which register holds the key with this check value (copied to out when
 * out is not NULL): KS_REG_NONE, KS_REG_CURRENT, KS_REG_NEW, or
 * KS_REG_OLD + i for history entry i. */
enum { KS_REG_NONE = 0, KS_REG_CURRENT = 1, KS_REG_NEW = 2, KS_REG_OLD = 3 };
KS_API int ks_reg_find(const ks_registers *r, const uint8_t kcv[KS_KCV_LEN], uint8_t out[KS_MK_LEN]);
KS_API void ks_key_kcv(const uint8_t key[KS_MK_LEN], uint8_t kcv[KS_KCV_LEN]);
/* The highest epoch a committed key of the history sealed (aborted keys do not
 * count): a keystore whose current epoch is below it is an older copy put back
 * in place (a rollback), not the keystore the key file followed. */
KS_API uint32_t ks_reg_max_epoch(const ks_registers *r);
/* Is the key with this check value the registers' CURRENT or NEW? */
KS_API bool ks_reg_holds_current(const ks_registers *r, const uint8_t kcv[KS_KCV_LEN]);

/* ---- store ------------------------------------------------------------- */
/* The keystore format this p11mk writes; it reads format 1 too, and upgrades
 * it on the first write (format 2 keeps its counters authenticated). */
#define KS_FORMAT 2u

typedef struct ks_store ks_store;

enum {
    KS_OPEN_CREATE = 1u << 0,   /* create the keystore if the directory has none */
    KS_OPEN_RDONLY = 1u << 1,
    KS_OPEN_NO_THREADS = 1u << 2, /* the application forbids threads (a database backend starts none) */
    KS_OPEN_COPY = 1u << 3,       /* a copy being made ready (restore, export), not the keystore its key file
                                     serves: an epoch behind the key file's is no rollback to report */
};

/* Open (or share) the keystore in `dir`: one LMDB environment per keystore
 * per process, reference counted and keyed by the directory's dev/inode.
 * Opening checks the format version and that `mk`'s KCV matches the KCV of
 * the keystore's current epoch (KS_EWRONGKEY naming both KCVs otherwise).
 * It never reads object records. After fork(), the child's first ks_open
 * opens a fresh environment (the parent's handle is abandoned, not closed). */
KS_API int ks_open(const char *dir, const ks_mkey *mk, unsigned flags, ks_store **out, ks_err *err);
/* The same for the keystore a configuration names: cfg->keystore is the
 * directory (its locks live there), cfg->backend the storage (LMDB in the
 * directory; PostgreSQL: the database cfg->postgresql names). A directory
 * already open in this process with another backend is KS_EINVAL. */
KS_API int ks_open_cfg(const ks_config *cfg, const ks_mkey *mk, unsigned flags, ks_store **out, ks_err *err);
KS_API void ks_close(ks_store *st);

/* The most keystores a restored one records as replaced (ks_info.succeeds). */
#define KS_SUCCEEDS_MAX 16
/* The meta record "succeeds" (a whole number of 16-byte ids) into out: how
 * many, the first KS_SUCCEEDS_MAX; 0 for a value of another length. */
KS_API size_t ks_succeeds_decode(const void *val, size_t len, uint8_t out[KS_SUCCEEDS_MAX][16]);

typedef struct {
    uint32_t format_version;
    uint8_t keystore_id[16];
    uint32_t epoch;              /* current epoch */
    uint8_t kcv[KS_KCV_LEN];     /* KCV of the current epoch's key */
    uint64_t map_size;
    uint64_t n_tokens;
    uint64_t n_objects;          /* all tokens */
    int rot_state;               /* KS_ROT_* */
    uint32_t new_epoch;          /* staged epoch, 0 when idle */
    uint64_t generation;         /* bumps on every stage, commit and abort */
    uint8_t new_kcv[KS_KCV_LEN]; /* KCV of the staged epoch's key, when new_epoch != 0 */
    uint64_t auto_interval;      /* automatic rotation period in seconds, 0 when off */
    uint64_t last_rotation;      /* unix time of the last committed rotation, 0 if none */
    size_t n_succeeds;           /* restored from a copy over other keystores in their place (newest */
    uint8_t succeeds[KS_SUCCEEDS_MAX][16]; /* first): their ids, whose key files follow this one */
} ks_info;
KS_API int ks_get_info(ks_store *st, ks_info *info);
/* Did this keystore, restored in another's place, succeed the keystore id? */
KS_API bool ks_info_succeeds(const ks_info *info, const uint8_t id[16]);
KS_API const char *ks_path(ks_store *st);
/* Opened read-only (by request, or because this user may not write it)? */
KS_API bool ks_readonly(ks_store *st);
/* Cheap (no LMDB write, no crypto) current epoch of the keystore. */
KS_API uint32_t ks_epoch(ks_store *st);
/* A number that changes whenever a write commits to the keystore, from any
 * process, read without a transaction (a few loads). Two equal readings mean
 * nothing committed in between, so whatever the caller checked after the
 * first reading still holds: it lets a key cache skip its per-use stamp
 * check. What a check vouches for is its transaction's ks_txn_seq, not a
 * reading taken before it (that may be ahead of the snapshot). 0 means
 * unknown: treat it as "changed". */
KS_API uint64_t ks_commit_seq(ks_store *st);

/* The read transactions open on the keystore now, of every process, and
 * the oldest: how many commits it is behind the last one, and its process.
 * A read that lasts (a process stopped or stuck inside one) keeps every page
 * written since from being reused: the file grows with each write until it
 * ends. KS_OK; KS_EINVAL when the backend keeps no such table (a database). */
typedef struct {
    unsigned active;          /* read transactions open */
    uint64_t oldest_behind;   /* commits since the oldest one's snapshot (0: none open) */
    long oldest_pid;          /* its process (0: none) */
} ks_readers_info;
KS_API int ks_readers(ks_store *st, ks_readers_info *out);

/* ---- memory for secrets (ks_secmem.c) ---- */
/* Zeroed, excluded from core dumps, locked against swap where the limit allows. */
KS_API void *ks_secmem_alloc(size_t n);
KS_API void ks_secmem_free(void *p); /* cleanse + release; NULL is fine */
/* OpenSSL's secure heap, where OpenSSL keeps private key parts (EC private
 * numbers, Ed25519/X25519 private keys, HMAC keys, the big numbers of EC
 * signing; not RSA's in OpenSSL 3.0): set up with cfg->secure_heap_kib when the
 * process has none yet (an application's own secure heap is used as is).
 * Process-wide and never torn down; returns true when a secure heap exists. */
KS_API bool ks_secure_heap_init(const ks_config *cfg);
/* More than half of the secure heap the module set up is in use: the key
 * cache lets go of its keys so that operations keep room to work. */
KS_API bool ks_secure_heap_pressed(void);

/* ---- PIN attempts (ks_store.c) ----
 * Serializes PIN attempts on one token across every thread and process: an
 * open-file-description lock (F_OFD_SETLK) on one byte of data.mdb far past
 * its end, at an offset of the token's own (LMDB never locks data.mdb),
 * reached through a turnstile byte so that no attempt waits behind a
 * stream of others (each waiter takes the lock at its next try), and
 * where several hosts share the storage (PostgreSQL) a lock of the
 * storage's too (a session advisory lock), taken after it, so that no more
 * attempts than the tries left are in flight across the fleet. A lock dies
 * with its holder, so a killed attempt never blocks the next.
 * KS_OK: *a holds the locks until ks_attempt_unlock(a). KS_EROFS: this
 * process cannot write the keystore (so it cannot count attempts either).
 * KS_EBUSY: another attempt held a lock for wait_ms. KS_EIO otherwise. */
typedef struct {
    int fd;           /* the file lock's description; -1: none */
    void *fleet;      /* the storage's lock (backend's); NULL: none */
    ks_store *st;
    uint32_t token_id;
} ks_attempt;
#define KS_ATTEMPT_INIT {-1, NULL, NULL, 0}
KS_API int ks_attempt_lock(ks_store *st, uint32_t token_id, unsigned wait_ms, ks_attempt *a);
/* Registers the keystore's fork handlers: ks_attempt_lock's descriptors
 * closed in a fork child, and a fork waiting for the PostgreSQL listener
 * threads to be idle (ks_pg.c). A process that also registers handlers
 * that wait for calls into the keystore calls this first (prepare handlers
 * run in the reverse order). Idempotent. */
KS_API void ks_process_setup(void);
KS_API void ks_attempt_unlock(ks_attempt *a);

/* ---- transactions ------------------------------------------------------ */
typedef struct ks_txn ks_txn;

/* Read transaction: never blocks writers, never fsyncs. */
KS_API int ks_read_begin(ks_store *st, ks_txn **txn);
KS_API void ks_read_end(ks_txn *txn);
/* The ks_commit_seq reading this transaction's snapshot is current at: what
 * a cache records after a check made in it. Not a ks_commit_seq taken before
 * ks_read_begin: LMDB publishes a commit's meta page (ks_commit_seq) before
 * new readers get its snapshot, so that reading may be ahead of what the
 * transaction sees. 0: unknown. */
KS_API uint64_t ks_txn_seq(ks_txn *txn);

/* Write: runs fn inside one write transaction and commits it. If LMDB
 * reports the map full, the transaction is aborted, the map grown and fn
 * run again (fn must therefore be repeatable: no side effects outside the
 * txn until ks_write returns KS_OK). fn returns KS_OK to commit; any other
 * value aborts and is returned. */
typedef int (*ks_write_fn)(ks_txn *txn, void *arg);
KS_API int ks_write(ks_store *st, ks_write_fn fn, void *arg);

/* ---- tokens ------------------------------------------------------------ */
/* Token ids are small integers > 0, never reused (a deleted token's id is
 * not given again: a process still holding it must not reach a newer token).
 * The blob is sealed and bound to (keystore id, token id, epoch). */
KS_API int ks_token_new_id(ks_txn *txn, uint32_t *token_id); /* the id the next new token gets */
KS_API int ks_token_put(ks_txn *txn, uint32_t token_id, const uint8_t *blob, size_t len);
/* *blob is malloc'd; caller must cleanse+free (ks_buf_free). */
KS_API int ks_token_get(ks_txn *txn, uint32_t token_id, uint8_t **blob, size_t *len);
/* KS_OK when the token exists, KS_ENOTFOUND when not (nothing unsealed). */
KS_API int ks_token_exists(ks_txn *txn, uint32_t token_id);
/* Delete a token with all its objects and index entries. Its incarnation
 * counter advances (a re-initialization is a delete and a put). */
KS_API int ks_token_del(ks_txn *txn, uint32_t token_id);
/* How many times the token was wiped or deleted (0 if never): logins made
 * before it changed belong to another token's contents. */
KS_API int ks_token_incarnation(ks_txn *txn, uint32_t token_id, uint64_t *inc);
/* Ascending token ids; *ids malloc'd. */
KS_API int ks_token_list(ks_txn *txn, uint32_t **ids, size_t *n);
/* The token's number of objects, as the authenticated metadata counts them (O(1)). */
KS_API int ks_token_count_objects(ks_txn *txn, uint32_t token_id, uint64_t *n);

/* ---- objects ----------------------------------------------------------- */
/* Object ids are unique per keystore, > 0, never reused. */
KS_API int ks_obj_new_id(ks_txn *txn, uint64_t *oid);
/* Seal and store a new object under an id from ks_obj_new_id. AAD binds
 * keystore id, token id, object id, epoch. Never overwrites: an id already in
 * use (the id counter went back) is KS_ECORRUPT, logged, nothing written. */
KS_API int ks_obj_create(ks_txn *txn, uint32_t token_id, uint64_t oid, const uint8_t *blob, size_t len);
/* Seal and store a new version of an existing object (KS_ENOTFOUND if it is gone). */
KS_API int ks_obj_put(ks_txn *txn, uint32_t token_id, uint64_t oid, const uint8_t *blob, size_t len);
/* Unseal. *blob malloc'd (ks_buf_free). KS_ECORRUPT on authentication failure. */
KS_API int ks_obj_get(ks_txn *txn, uint32_t token_id, uint64_t oid, uint8_t **blob, size_t *len);
/* A record's stamp changes on every write (it is the GCM tag + epoch). It is
 * read without unsealing: caches compare stamps to know a cached unsealed
 * copy is still the stored one. */
typedef struct {
    uint32_t epoch;
    uint8_t tag[16];
} ks_stamp;
KS_API int ks_obj_stamp(ks_txn *txn, uint32_t token_id, uint64_t oid, ks_stamp *stamp);
KS_API int ks_obj_del(ks_txn *txn, uint32_t token_id, uint64_t oid);
/* Call cb for every object id of a token, ascending; cb returns non-zero to stop
 * (that value is returned). */
typedef int (*ks_oid_cb)(uint64_t oid, void *arg);
KS_API int ks_obj_foreach(ks_txn *txn, uint32_t token_id, ks_oid_cb cb, void *arg);

/* ---- indexes ----------------------------------------------------------- */
/* Keyed (HMAC) index of (token, attribute type, value) -> object ids. The
 * HMAC key is random per keystore and stored sealed, so index keys reveal
 * nothing about labels or ids. Lookups may return false positives only in
 * theory (truncated MAC); callers re-check the attribute on the object. */
KS_API int ks_idx_add(ks_txn *txn, uint32_t token_id, uint32_t attr, const void *val, size_t len, uint64_t oid);
KS_API int ks_idx_del(ks_txn *txn, uint32_t token_id, uint32_t attr, const void *val, size_t len, uint64_t oid);
KS_API int ks_idx_lookup(ks_txn *txn, uint32_t token_id, uint32_t attr, const void *val, size_t len,
                         ks_oid_cb cb, void *arg);
/* KS_OK when this exact entry (value -> oid) is in the index, KS_ENOTFOUND when not. */
KS_API int ks_idx_contains(ks_txn *txn, uint32_t token_id, uint32_t attr, const void *val, size_t len, uint64_t oid);

KS_API void ks_buf_free(uint8_t *buf, size_t len); /* cleanse + free */

/* ---- shared services (ks_libctx.c; logging: ks_log.c) --------------------- */
/* The OpenSSL library context of every p11mk layer: private, with the
 * default provider (and the legacy one once asked for), so that the
 * application's OpenSSL configuration, providers and engines (a pkcs11
 * provider or engine pointing back at this token, say) never reach p11mk's
 * own crypto. */
struct ossl_lib_ctx_st;
KS_API struct ossl_lib_ctx_st *ks_libctx(void);
/* Load OpenSSL's legacy provider (single DES) into that context, next to the
 * default one, never into the application's: true once it is loaded (it
 * stays for the life of the process). False, with OpenSSL's errors dropped,
 * when it cannot be loaded (not installed, OPENSSL_MODULES elsewhere). */
KS_API bool ks_libctx_load_legacy(void);

/* ---- master-key rotation state ------------------------------------------- */
/* States of a keystore's rotation, kept (sealed) in its metadata:
 *   IDLE      records are under CURRENT (epoch N)
 *   STAGED    NEW (epoch N+1) is loaded: new and changed records use it
 *   REWRAP    the rewrap is under way (a resume cursor is kept)
 *   READY     no record is left under CURRENT: commit may run
 *   ABORTING  NEW is being withdrawn: records go back to CURRENT
 * Every step is one or more short write transactions; a crash at any point
 * leaves a state from which the same step can simply be run again. */
/* KS_ROT_PENDING: a keystore several hosts share has NEW staged, but not
 * every host has proven it holds NEW: records stay sealed under CURRENT
 * (a host without NEW could not read them) until it becomes STAGED. */
enum { KS_ROT_IDLE = 0, KS_ROT_STAGED, KS_ROT_REWRAP, KS_ROT_READY, KS_ROT_ABORTING, KS_ROT_PENDING };
KS_API const char *ks_rot_state_name(int state);
/* What an admin does about a rotation in this state before another can begin. */
KS_API const char *ks_rot_busy_advice(int state);
/* Is a master-key step running on the keystore in dir (this host's
 * rotation.lock held)? Looked up without touching the lock (/proc/locks),
 * so a step starting meanwhile is never turned away. 1: held (holder: its
 * pid, command and start, as it wrote them), 0: free, -1: cannot tell. */
KS_API int ks_mk_step_running(const char *dir, char *holder, size_t n);

typedef struct {
    uint64_t done;      /* records resealed by this call */
    uint64_t remaining; /* records still to do (estimate while running) */
} ks_rot_progress;
/* Called after each batch; return non-zero to stop early (the work done so far stays). */
typedef int (*ks_rot_cb)(const ks_rot_progress *p, void *arg);
/* Records per epoch (cnt[i] for epochs[i]); up to n epochs, returns how many. */
KS_API int ks_rot_count(ks_store *st, uint32_t *epochs, uint64_t *cnt, size_t n, size_t *found);

/* ---- master-key lifecycle ---------------------------------------------------
 *
 * The one protocol that changes master keys. Every step below:
 *   1. takes the keystore's lifecycle lock (DIR/rotation.lock, flock),
 *      waiting up to opts->wait_ms, else KS_EBUSY naming the holder;
 *   2. reads the configuration's master_key, the registers (key file) and
 *      the keystore's rotation state afresh under the lock;
 *   3. repairs registers that a crash left one step behind the keystore:
 *      a NEW key the keystore has committed becomes CURRENT, a NEW key it
 *      does not use moves to the history marked aborted (keys are moved,
 *      never dropped), and says so in result->repaired;
 *   4. compares the state with opts->expect (what a person confirmed at a
 *      prompt) and refuses with KS_ECHANGED, writing nothing, if it moved;
 *   5. writes in the order that keeps this invariant at every instant: the
 *      key file holds every key that the keystore's committed state names.
 *        stage:  the key file gains NEW       -> the keystore stages epoch N+1
 *        commit: the keystore makes N+1 current -> the key file promotes NEW
 *        abort:  the keystore withdraws N+1   -> the key file retires NEW
 *      Keys leave the key file only through ks_mk_clear_history.
 * So any mix of steps, in any number of processes, killed at any
 * instruction, leaves a keystore that opens and a key file that lost no key;
 * running the step again (or ks_mk_auto_run) finishes or cleanly refuses.
 * Running applications never take the lock: they read the key file (replaced
 * atomically) when the keystore's generation moves.
 *
 * Return codes common to every step: KS_OK; KS_EBUSY (lock held by another
 * step); KS_ECHANGED (opts->expect no longer holds); KS_ESTATE (the rotation
 * state does not allow the step); KS_ENOKEY (a key the keystore names is
 * missing from the key file); KS_EPERM, KS_EINVAL (key file refused or
 * damaged); KS_EROFS; KS_EIO, KS_ENOSPC, KS_ENOMEM. err says what happened
 * and what to do next. */
typedef struct ks_mk ks_mk;

/* Open the keystore named by cfg for lifecycle work (cfg is copied). */
KS_API int ks_mk_open(const ks_config *cfg, ks_mk **out, ks_err *err);
KS_API void ks_mk_close(ks_mk *m);
KS_API ks_store *ks_mk_store(ks_mk *m);

typedef struct {
    uint8_t kcv[KS_KCV_LEN];
    uint32_t epoch;
    uint64_t retired;
    bool aborted;
} ks_histinfo;

/* The state a person is shown (and later confirms). */
typedef struct {
    uint32_t epoch;
    int rot_state;
    uint32_t new_epoch;                 /* 0 when idle */
    uint8_t kcv[KS_KCV_LEN];            /* CURRENT */
    bool has_new;
    uint8_t new_kcv[KS_KCV_LEN];        /* NEW, when has_new */
    bool key_file;                      /* false: the built-in default key, no registers yet */
    uint64_t auto_interval, last_rotation, next_due;
    size_t n_history;
    ks_histinfo *history;               /* newest first, no key bytes; ks_mk_view_free */
    uint8_t history_digest[32];         /* identifies the history's contents */
} ks_mk_view;
/* Read the state without taking the lock (registers lagging after a crash
 * are shown as the next step will repair them). */
KS_API int ks_mk_view_get(ks_mk *m, ks_mk_view *v, ks_err *err);
KS_API void ks_mk_view_free(ks_mk_view *v);

typedef struct {
    const ks_mk_view *expect; /* refuse (KS_ECHANGED) unless the state is still this one */
    unsigned wait_ms;         /* how long to wait for another step's lock */
    /* Called once if the step waits, with what for ("another admin command
     * ... to finish (holder)", at once) or, its locks held, a write by an
     * application ("a write ... to end", after a second; at most
     * max(wait_ms, 2 s), then KS_EBUSY). */
    void (*waiting)(const char *what, void *arg);
    size_t batch;             /* records per rewrap transaction (0: 2000) */
    ks_rot_cb progress;       /* after each batch; non-zero stops (resumable) */
    void *arg;                /* for waiting and progress */
    const char *key_file;     /* a keystore still on the built-in default key keeps its registers here
                                 from its first stage on (NULL: master.key next to the configuration) */
    const char *command;      /* named in the lock file for whoever waits */
} ks_mk_opts;

enum { /* ks_mk_result.repaired */
    KS_MK_REPAIRED_PROMOTED = 1u << 0,   /* a commit's key file update was missing: NEW is now CURRENT */
    KS_MK_REPAIRED_RETIRED = 1u << 1,    /* a NEW key the keystore does not use moved to the history */
    KS_MK_REPAIRED_REORDERED = 1u << 2,  /* the key file named another key CURRENT or NEW than the keystore */
};
typedef struct {
    uint32_t epoch, new_epoch;           /* after the step */
    uint8_t kcv[KS_KCV_LEN];             /* CURRENT after the step */
    uint8_t new_kcv[KS_KCV_LEN];         /* the key staged by stage/rotate/auto-update */
    uint64_t resealed;                   /* records resealed by rewrap, abort or rotate */
    unsigned repaired;                   /* KS_MK_REPAIRED_* */
    bool stopped;                        /* the progress callback stopped the pass */
    bool auto_disabled;                  /* KS_MK_MANUAL turned automatic rotation off */
    bool rotated, finished;              /* auto-update: rotated / finished an interrupted step */
    uint64_t auto_interval, next_due;    /* automatic rotation every so many seconds, next due (0: off) */
    char key_file[4096];                 /* set when this step gave the keystore its key file */
    char config[4096];                   /* ... and the configuration file that now names it */
    size_t n_destroyed;                  /* clear-history */
    ks_histinfo *destroyed;              /* ks_mk_result_free */
    uint8_t backup_kcv[KS_KCV_LEN];      /* restore: the key the copy was sealed under */
    bool from_default;                   /* restore: the copy was an export under the default key */
    uint8_t keystore_id[16];             /* restore: the id of the keystore put in place (the copy's) */
    bool joined;                         /* stage: another host had staged this key; this host now holds it */
} ks_mk_result;
KS_API void ks_mk_result_free(ks_mk_result *res);

/* IDLE -> STAGED: key becomes NEW (epoch N+1). KS_ESTATE if already staged;
 * KS_EINVAL if it is the current key. */
KS_API int ks_mk_stage(ks_mk *m, const ks_mkey *key, const ks_mk_opts *o, ks_mk_result *res, ks_err *err);
/* STAGED/REWRAP -> READY: reseal every record under NEW (resumable). */
KS_API int ks_mk_rewrap(ks_mk *m, const ks_mk_opts *o, ks_mk_result *res, ks_err *err);
/* READY -> IDLE, NEW becomes CURRENT and the old CURRENT heads the history.
 * KS_ESTATE while any record is under CURRENT, or when idle (unless a crashed
 * commit's key file update was repaired: KS_OK with repaired set). */
KS_API int ks_mk_commit(ks_mk *m, const ks_mk_opts *o, ks_mk_result *res, ks_err *err);
/* STAGED/REWRAP/READY/ABORTING -> IDLE under CURRENT; NEW moves to the
 * history (marked aborted: a backup taken while it was staged needs it). */
KS_API int ks_mk_abort(ks_mk *m, const ks_mk_opts *o, ks_mk_result *res, ks_err *err);
/* Stage (key, or a generated key when NULL), rewrap and commit under one
 * hold of the lock. KS_MK_MANUAL: automatic rotation is turned off in the
 * same commit (a key set by hand). KS_ESTATE if a rotation is under way. */
enum { KS_MK_MANUAL = 1u << 0 };
KS_API int ks_mk_rotate(ks_mk *m, const ks_mkey *key, unsigned flags, const ks_mk_opts *o, ks_mk_result *res,
                        ks_err *err);
/* Destroy retired keys: all of them except the `keep` newest, and (when
 * before > 0) only those of epochs below `before`. */
KS_API int ks_mk_clear_history(ks_mk *m, size_t keep, uint32_t before, const ks_mk_opts *o, ks_mk_result *res,
                               ks_err *err);
/* Automatic rotation every `interval` seconds: 0 (off) or KS_AUTO_MIN..KS_AUTO_MAX (KS_EINVAL otherwise). */
#define KS_AUTO_MIN 3600ull
#define KS_AUTO_MAX (3650ull * 86400ull)
KS_API int ks_mk_set_auto(ks_mk *m, uint64_t interval, const ks_mk_opts *o, ks_mk_result *res, ks_err *err);
/* The timer's step: finish an interrupted rotation or abort, then rotate to a
 * generated key if automatic rotation is on and due at `now` (unix time). */
KS_API int ks_mk_auto_run(ks_mk *m, uint64_t now, const ks_mk_opts *o, ks_mk_result *res, ks_err *err);
/* When a rotation is due: last + interval, saturating (UINT64_MAX never comes). */
KS_API uint64_t ks_auto_due(uint64_t last, uint64_t interval);
/* Replace the keystore named by cfg with a backup or an export, under the
 * lifecycle lock: the copy is opened under any register of the key file (or
 * the default key), an interrupted rotation in it is withdrawn, it is
 * resealed under CURRENT at an epoch past the live keystore's, verified,
 * and swapped in only while no application has the keystore open (KS_EBUSY
 * otherwise). The live keystore need not open (restore is the remedy when it
 * does not). */
/* ---- hosts sharing a keystore (backend = postgresql) ---------------------
 * Each host of the fleet announces, with a proof only a holder can make,
 * which master keys its key file holds (ks_fleet.c). Rewrap and commit
 * refuse (KS_ESTATE, naming the hosts) while any host has not proven the
 * staged NEW key; stage on a host whose keystore already has NEW staged
 * with the same key adds it to that host's key file. */
#define KS_FLEET_MAX_KEYS 4
typedef struct {
    char name[256];
    uint64_t seen;                        /* its last contact (unix time, the database's clock) */
    bool has_current, has_new;            /* proven to hold the keystore's CURRENT / staged NEW key */
    bool malformed;                       /* its row could not be read */
    size_t n_kcv;
    uint8_t kcv[KS_FLEET_MAX_KEYS][KS_KCV_LEN]; /* the check values it announced */
} ks_host;
/* This host's name: cfg->host_name, else the system's host name. */
KS_API const char *ks_host_name(const ks_config *cfg, char *buf, size_t n);
/* The fleet (n = 0 for a keystore one host owns); free(*hosts). */
KS_API int ks_mk_hosts(ks_mk *m, ks_host **hosts, size_t *n, ks_err *err);
/* Take a host out of the fleet (it joins again when p11mk next opens the keystore there). KS_ENOTFOUND. */
KS_API int ks_mk_host_remove(ks_mk *m, const char *name, const ks_mk_opts *o, ks_err *err);

/* A key file serves one keystore and names it (ks_registers.owner): the
 * steps refuse a file naming another, opening reports it, creating a
 * keystore refuses it. ks_keyfile_claim makes the file at path name st, for
 * 'init --generate-key' (a file nobody else has seen). */
KS_API int ks_keyfile_claim(const char *path, unsigned mode, ks_store *st, ks_err *err);
KS_API int ks_mk_restore(const ks_config *cfg, const char *file, const ks_mk_opts *o, ks_mk_result *res,
                         ks_err *err);

/* A backup taken under the lifecycle lock, so that the keys the copy needs
 * are exactly the ones info names (see ks_backup). */
KS_API int ks_mk_backup(ks_mk *m, const char *file, const ks_mk_opts *o, ks_info *info, ks_err *err);
/* ks_export_default under the lifecycle lock. */
KS_API int ks_mk_export(ks_mk *m, const char *file, const ks_mk_opts *o, ks_err *err);

/* ---- copies ------------------------------------------------------------- */
/* A consistent, compacted copy of the live keystore into a new file (mode
 * 0600), still sealed under the keystore's keys; the file appears only when
 * complete (an interrupted backup leaves nothing under its name). Readers and
 * writers go on. info (optional) gets the state the copy was taken in: its
 * epoch and check value, and the staged ones if a rotation was under way. */
KS_API int ks_backup(ks_store *st, const char *file, ks_info *info, ks_err *err);
/* A copy resealed under the built-in default key, to move a keystore to a
 * host with another master key (refused while a rotation is under way). */
KS_API int ks_export_default(ks_store *st, const char *file, ks_err *err);

/* Check every record: it opens under its epoch's key; the authenticated
 * metadata (counters, and per token the exact set of object records and index
 * entries) matches what is stored. Returns the number of failures and calls
 * cb for each. Kinds: 'T' token record, 'O' object record, 'N' object whose
 * token does not exist, 'I' index entry pointing at no object, 'M' metadata,
 * 'F' the storage's file itself (a page its engine could not have written),
 * 'K' the key file lacks a key the keystore writes under (the staged one).
 * `what` is a sentence (NULL for a record that fails to open: err says why). */
typedef void (*ks_verify_cb)(char kind, uint32_t token, uint64_t oid, int err, const char *what, void *arg);
KS_API int ks_verify(ks_store *st, ks_verify_cb cb, void *arg, uint64_t *checked, uint64_t *failed);

#ifdef __cplusplus
}
#endif
#endif
