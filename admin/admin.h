/* p11mk-admin: shared declarations. */
#ifndef P11MK_ADMIN_H
#define P11MK_ADMIN_H

#include <stdbool.h>
#include <stdio.h>

/* Exit codes (documented in --help and the man page). */
enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,   /* the operation failed; nothing was changed */
    EXIT_USAGE = 2,    /* bad command line */
    EXIT_CONFIG = 3,   /* configuration file error */
    EXIT_KEY = 4,      /* master key missing, unreadable, refused or not matching the keystore */
    EXIT_KEYSTORE = 5, /* keystore missing, unreadable or damaged */
};

typedef struct {
    bool json;
    const char *generate_key; /* init --generate-key FILE */
} admin_opts;

int admin_init(const admin_opts *o);
int admin_status(const admin_opts *o);

/* Print a JSON string literal (with quotes), escaping as RFC 8259 requires. */
void admin_json_str(FILE *f, const char *s);
/* Print "p11mk-admin: error: ..." to stderr. */
void admin_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Map a tok_ctx_open failure message to an exit code. */
int admin_exit_for_open_error(const char *msg);

#endif
