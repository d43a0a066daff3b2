/* p11mk-admin: shared declarations.
 *
 * The admin owns parsing, prompts, progress, printing and the one map from
 * failures to exit codes; it has no protocol of its own. May call: the token
 * layer's tok_admin.h (tokens, objects as shown without a PIN) and the
 * keystore's ks.h (configuration, master keys, the lifecycle steps). */
#ifndef P11MK_ADMIN_H
#define P11MK_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "keystore/ks.h"

/* Exit codes (documented in --help and the man page). */
enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,   /* the operation failed; nothing was changed */
    EXIT_USAGE = 2,    /* bad command line */
    EXIT_CONFIG = 3,   /* configuration file error */
    EXIT_KEY = 4,      /* master key missing, unreadable, refused or not matching the keystore */
    EXIT_KEYSTORE = 5, /* keystore missing, unreadable or damaged */
    EXIT_STATE = 6,    /* the rotation state does not allow this step, another step holds the lock,
                          or the state changed while the user was asked */
};

typedef struct {
    bool json;
    bool quiet;
    bool yes;                    /* answer yes to confirmations */
    bool passphrase;             /* stage: ask for a passphrase (twice) */
    bool generate;               /* --generate given (stage: the default; set-master-key refuses it) */
    const char *generate_key;    /* init --generate-key FILE */
    const char *passphrase_file; /* read the new key's passphrase from FILE */
    const char *key_file;        /* where to keep the registers when the keystore is on the default key */
    size_t batch;                /* records per rewrap transaction (0: default) */
    const char *interval;        /* auto-update --interval DURATION */
    bool disable;                /* auto-update --disable */
    bool run;                    /* auto-update run */
    bool to_default;             /* export --to-default */
    unsigned parts;              /* --parts N: the key is entered as N parts (split knowledge) */
    const char *token;           /* list, delete-token: --token LABEL */
    unsigned long slot;          /* delete-token --slot N (0: not given) */
    bool help;                   /* --help: the whole help, or a command's */
    int wait_s;                  /* --wait SECONDS for another step's lock (-1: the default, 10) */
    bool has_keep;               /* clear-history --keep N */
    size_t keep;
    uint32_t before;             /* clear-history --before EPOCH (0: not given) */
    const char *file;            /* backup / restore / export FILE; host-remove NAME */
} admin_opts;

int admin_init(const admin_opts *o);
int admin_status(const admin_opts *o);
int admin_stage(const admin_opts *o);
int admin_rewrap(const admin_opts *o);
int admin_commit(const admin_opts *o);
int admin_abort(const admin_opts *o);
int admin_rotate(const admin_opts *o);
int admin_set_master_key(const admin_opts *o);
int admin_clear_history(const admin_opts *o);
int admin_verify(const admin_opts *o);
int admin_auto_update(const admin_opts *o);
int admin_version(const admin_opts *o);
int admin_backup(const admin_opts *o);
int admin_restore(const admin_opts *o);
int admin_export(const admin_opts *o);
int admin_list(const admin_opts *o);
int admin_delete_token(const admin_opts *o);
int admin_host_remove(const admin_opts *o);
/* Ask question on the terminal (y/N); true with --yes. Without a terminal
 * and without --yes: an error saying to add --yes, and false. */
bool admin_confirm(const admin_opts *o, const char *question);
void admin_format_time(uint64_t t, char *out, size_t n);
void admin_format_duration(uint64_t s, char *out, size_t n);

/* Print a JSON string literal (with quotes), escaping as RFC 8259 requires. */
void admin_json_str(FILE *f, const char *s);
/* Print "p11mk-admin: error: ..." to stderr. */
void admin_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The one map from failures to exit codes, for every command: the area of
 * the failure (ks_err: configuration, key file), else the KS_* code. */
int admin_exit_for(int ks_rc, const ks_err *err);
/* The exit code for this thread's last failed tok_ctx_open (which has
 * already printed the reason). */
int admin_exit_for_open(void);

#endif
