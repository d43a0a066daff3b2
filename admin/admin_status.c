/* p11mk-admin: init and status. */
#include "admin.h"
#include "keystore/ks.h"
#include "token/tok_admin.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- init ------------------------------------------------------------------ */

/* With no configuration file in use, record the new key file in the
 * per-user one so the module and later commands find it. */
static void record_key_in_config(const ks_config *cfg, const char *keyfile)
{
    char *path;
    FILE *f;
    int fd;

    if (cfg->source) {
        char named[PATH_MAX];
        if (cfg->master_key && realpath(cfg->master_key, named) && strcmp(named, keyfile) == 0)
            printf("The configuration %s names this key file already.\n", cfg->source);
        else
            printf("Next: set \"master_key = %s\" in %s so the module uses the new key.\n", keyfile, cfg->source);
        return;
    }
    path = ks_config_home(cfg);
    if (!path || ks_mkdir_p(path, false) != 0 || (fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600)) < 0 ||
        !(f = fdopen(fd, "w"))) {
        printf("Next: create a configuration file with\n  keystore = %s\n  master_key = %s\n", cfg->keystore,
               keyfile);
        free(path);
        return;
    }
    fprintf(f, "# written by p11mk-admin init\nkeystore = %s\nmaster_key = %s\n", cfg->keystore, keyfile);
    fclose(f);
    printf("Wrote configuration %s (keystore and master_key).\n", path);
    free(path);
}


int admin_init(const admin_opts *o)
{
    ks_config cfg;
    ks_mkey mk;
    ks_err err = KS_ERR_INIT;
    ks_store *st = NULL;
    char keyfile[PATH_MAX] = "";
    int rc;

    if ((rc = ks_config_load(&cfg, &err)) != KS_OK) {
        admin_error("%s", err.msg);
        return admin_exit_for(rc, &err);
    }
    if (o->generate_key) {
        rc = ks_mkey_generate_file(o->generate_key, &mk, &err);
        if (rc != KS_OK) {
            admin_error("cannot create key file %s: %s", o->generate_key, err.msg[0] ? err.msg : ks_strerror(rc));
            ks_config_free(&cfg);
            return admin_exit_for(rc, &err);
        }
        if (!realpath(o->generate_key, keyfile))
            snprintf(keyfile, sizeof(keyfile), "%s", o->generate_key);
    } else if ((rc = ks_mkey_load(&cfg, &mk, &err)) != KS_OK) {
        admin_error("%s", err.msg[0] ? err.msg : ks_strerror(rc));
        ks_config_free(&cfg);
        return admin_exit_for(rc, &err);
    }
    rc = ks_open_cfg(&cfg, &mk, 0, &st, &err);
    if (rc == KS_OK || rc == KS_EWRONGKEY) {
        admin_error("a keystore already exists in %s; nothing was changed (see 'p11mk-admin status')",
                    cfg.keystore);
        if (st)
            ks_close(st);
        if (o->generate_key)
            unlink(o->generate_key);
        rc = EXIT_FAILED;
        goto out;
    }
    err.msg[0] = 0;
    /* (A key file that names a keystore already is refused here: ks_open.) */
    rc = ks_open_cfg(&cfg, &mk, KS_OPEN_CREATE, &st, &err);
    if (rc != KS_OK) {
        admin_error("cannot create keystore in %s: %s", cfg.keystore, err.msg[0] ? err.msg : ks_strerror(rc));
        if (o->generate_key)
            unlink(o->generate_key);
        rc = admin_exit_for(rc, &err);
        goto out;
    }
    /* The new key file names the new keystore at once. */
    if (o->generate_key && (rc = ks_keyfile_claim(o->generate_key, 0600, st, &err)) != KS_OK)
        fprintf(stderr, "p11mk-admin: warning: the key file %s could not be made to name the new keystore (%s); "
                        "its first master-key step binds it\n", o->generate_key, err.msg[0] ? err.msg : ks_strerror(rc));
    ks_close(st);
    printf("Created keystore %s sealed under the %s master key.\n", cfg.keystore,
           o->generate_key ? "new" : (mk.is_default ? "built-in default" : "configured"));
    if (o->generate_key)
        record_key_in_config(&cfg, keyfile);
    else if (mk.is_default)
        printf("Warning: the built-in default master key is the same on every install. Use\n"
               "'p11mk-admin init --generate-key FILE' for a keystore under a key of your own.\n");
    rc = EXIT_OK;
out:
    ks_mkey_clear(&mk);
    ks_config_free(&cfg);
    return rc;
}

/* ---- status ------------------------------------------------------------------ */

typedef struct {
    CK_SLOT_ID id;
    char label[33];
    uint64_t objects;
    CK_FLAGS flags;
    const char *binding, *binding_json; /* static strings */
} token_row;

static void trim_label(const CK_UTF8CHAR in[32], char out[33])
{
    int n = 32;

    memcpy(out, in, 32);
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = 0;
}

static const char *pin_state(CK_FLAGS f)
{
    if (!(f & CKF_USER_PIN_INITIALIZED))
        return "not set";
    if (f & CKF_USER_PIN_LOCKED)
        return "locked";
    if (f & CKF_USER_PIN_FINAL_TRY)
        return "final try";
    if (f & CKF_USER_PIN_COUNT_LOW)
        return "count low";
    return "ok";
}

/* Whether the token's private objects need a PIN at rest: the sentence for
 * people and the word for JSON. */
static void binding(tok_ctx *ctx, CK_SLOT_ID slot, const char **text, const char **json)
{
    tok_binding b;
    CK_USER_TYPE waiting;

    if (tok_token_binding(ctx, slot, &b, &waiting) != CKR_OK) {
        *text = "unknown (the token record cannot be read)", *json = "unknown";
    } else if (b == TOK_BIND_FULL) {
        *text = "need the PIN", *json = "pin-bound";
    } else if (b == TOK_BIND_NONE) {
        *text = "UNDER THE MASTER KEY ONLY until a user or SO login binds them", *json = "master-key-only";
    } else if (waiting == CKU_SO) {
        *text = "need the PIN, but their key is ALSO under the master key until the SO logs in once";
        *json = "escrowed-until-so-login";
    } else {
        *text = "need the PIN, but their key is ALSO under the master key until the user logs in once";
        *json = "escrowed-until-user-login";
    }
}

static size_t collect_tokens(tok_ctx *ctx, token_row **rows)
{
    tok_token_row *t = NULL;
    size_t n = 0;

    *rows = NULL;
    if (tok_token_rows(ctx, &t, &n) != CKR_OK || n == 0 || !(*rows = calloc(n, sizeof(**rows)))) {
        free(t);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        token_row *r = &(*rows)[i];
        r->id = t[i].slot;
        r->flags = t[i].info.flags;
        r->objects = t[i].objects;
        binding(ctx, t[i].slot, &r->binding, &r->binding_json);
        trim_label(t[i].info.label, r->label);
    }
    free(t);
    return n;
}

typedef struct {
    uint32_t epochs[8];
    uint64_t counts[8];
    size_t n;
    ks_mk_view v; /* history, staged key; v.n_history == 0 if it could not be read */
    int step;         /* a master-key step running on this host: 1 yes, 0 no, -1 cannot tell or not asked */
    char holder[256]; /* the running step's own description */
    bool have_readers; /* readers below: LMDB's reader table was read */
    ks_readers_info readers;
} rot_view;

/* What a process or a file says of itself may hold terminal escapes. */
static void printable(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

/* Is pid, as LMDB's reader table has it, this system's process of that
 * number? LMDB records the number the reader's own PID namespace gives it
 * (an application in a container has another one here, and this one may
 * be any process's, even init's): it is, if that process maps the
 * keystore's lock file. 1 (comm: its command), 0 no, -1 cannot tell
 * (its maps not readable by this user, no /proc). */
static int reader_here(const char *keystore, long pid, char *comm, size_t n)
{
    char path[64], real[PATH_MAX], lockp[PATH_MAX + 16], line[PATH_MAX + 160];
    int here = 0;
    comm[0] = '\0';
    if (pid <= 0 || !realpath(keystore, real))
        return -1;
    snprintf(lockp, sizeof(lockp), "%s/lock.mdb", real);
    snprintf(path, sizeof(path), "/proc/%ld/maps", pid);
    FILE *m = fopen(path, "re");
    if (!m)
        return -1;
    size_t ll = strlen(lockp);
    while (!here && fgets(line, sizeof(line), m)) {
        size_t l = strcspn(line, "\n");
        line[l] = '\0';
        here = l >= ll && strcmp(line + l - ll, lockp) == 0;
    }
    fclose(m);
    if (!here)
        return 0;
    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    FILE *c = fopen(path, "re");
    if (!c || !fgets(comm, (int)n, c))
        snprintf(comm, n, "command unknown");
    if (c)
        fclose(c);
    comm[strcspn(comm, "\n")] = '\0';
    printable(comm);
    return 1;
}

/* A read this many commits behind is named in the text form: an
 * application's reads last microseconds; a backup's or verify's, seconds. */
#define READER_BEHIND_TOLD 10

/* One host's view (a shared database's other hosts run steps too): asked
 * only of an LMDB keystore with a rotation under way. */
static void step_look(const ks_config *cfg, const ks_info *info, rot_view *rot)
{
    rot->step = -1;
    if (info->rot_state != KS_ROT_IDLE && (!cfg->backend || strcmp(cfg->backend, "lmdb") == 0))
        rot->step = ks_mk_step_running(cfg->keystore, rot->holder, sizeof(rot->holder));
    printable(rot->holder);
}

/* The hosts sharing the keystore (none for a keystore one host owns). */
typedef struct {
    ks_host *h;
    size_t n;
    bool failed;
} fleet_view;

static void hosts_json(const fleet_view *f)
{
    printf(",\n  \"hosts\": [");
    for (size_t i = 0; i < f->n; i++) {
        const ks_host *h = &f->h[i];
        printf("%s\n    {\"name\": ", i ? "," : "");
        admin_json_str(stdout, h->name);
        printf(", \"last_contact\": %llu, \"holds_current\": %s, \"holds_new\": %s, \"kcvs\": [",
               (unsigned long long)h->seen, h->has_current ? "true" : "false", h->has_new ? "true" : "false");
        for (size_t j = 0; j < h->n_kcv; j++) {
            char hex[2 * KS_KCV_LEN + 1];
            ks_kcv_hex(h->kcv[j], hex);
            printf("%s\"%s\"", j ? ", " : "", hex);
        }
        printf("]}");
    }
    printf("%s]", f->n ? "\n  " : "");
}

static void hosts_text(const ks_info *info, const fleet_view *f)
{
    if (f->failed) {
        printf("Hosts:           cannot be read (see the error above)\n");
        return;
    }
    printf("Hosts:           %zu sharing this keystore\n", f->n);
    for (size_t i = 0; i < f->n; i++) {
        const ks_host *h = &f->h[i];
        char when[64], kcvs[KS_FLEET_MAX_KEYS * (2 * KS_KCV_LEN + 2) + 1] = "";
        admin_format_time(h->seen, when, sizeof(when));
        for (size_t j = 0; j < h->n_kcv; j++) {
            char hex[2 * KS_KCV_LEN + 1];
            ks_kcv_hex(h->kcv[j], hex);
            snprintf(kcvs + strlen(kcvs), sizeof(kcvs) - strlen(kcvs), "%s%s", j ? " " : "", hex);
        }
        printf("  %-24s last contact %s; holds %s%s; KCVs %s\n", h->name, when,
               h->has_current ? "CURRENT" : "NOT the current key",
               !info->new_epoch ? "" : h->has_new ? " and NEW" : ", NOT the staged NEW key",
               h->malformed ? "(its row is unreadable)" : kcvs);
    }
}

static void print_json(const ks_config *cfg, const ks_mkey *mk, const ks_info *info, const rot_view *rot,
                       const fleet_view *fleet, const token_row *rows, size_t n)
{
    char kcv[2 * KS_KCV_LEN + 1];

    ks_kcv_hex(info->kcv, kcv);
    printf("{\n  \"keystore\": ");
    admin_json_str(stdout, cfg->keystore);
    printf(",\n  \"config\": ");
    if (cfg->source)
        admin_json_str(stdout, cfg->source);
    else
        printf("null");
    printf(",\n  \"backend\": \"%s\"", cfg->backend ? cfg->backend : "lmdb");
    if (fleet->n || (cfg->backend && strcmp(cfg->backend, "lmdb") != 0))
        hosts_json(fleet);
    printf(",\n  \"format_version\": %u,\n  \"master_key\": {\"source\": ", info->format_version);
    admin_json_str(stdout, mk->is_default ? "default" : mk->source);
    printf(", \"default\": %s, \"kcv\": \"%s\", \"new_kcv\": ", mk->is_default ? "true" : "false", kcv);
    if (info->new_epoch) {
        char nk[2 * KS_KCV_LEN + 1];
        ks_kcv_hex(info->new_kcv, nk);
        printf("\"%s\"},\n", nk);
    } else {
        printf("null},\n");
    }
    printf("  \"epoch\": %u,\n  \"rotation\": {\"state\": \"%s\", \"staged_epoch\": %u, \"step_running\": %s, "
           "\"history\": %zu, \"history_keys\": [", info->epoch, ks_rot_state_name(info->rot_state), info->new_epoch,
           rot->step == 1 ? "true" : rot->step == 0 ? "false" : "null", rot->v.n_history);
    for (size_t i = 0; i < rot->v.n_history; i++) {
        char hk[2 * KS_KCV_LEN + 1];
        ks_kcv_hex(rot->v.history[i].kcv, hk);
        printf("%s{\"kcv\": \"%s\", \"epoch\": %u, \"retired\": %llu, \"aborted\": %s}", i ? ", " : "", hk,
               rot->v.history[i].epoch, (unsigned long long)rot->v.history[i].retired,
               rot->v.history[i].aborted ? "true" : "false");
    }
    printf("], \"records_per_epoch\": {");
    for (size_t i = 0; i < rot->n; i++)
        printf("%s\"%u\": %llu", i ? ", " : "", rot->epochs[i], (unsigned long long)rot->counts[i]);
    printf("}, \"auto_update_interval\": %llu, \"last_rotation\": %llu, \"next_due\": %llu},\n  \"map_size\": %llu,\n  \"objects\": %llu,\n",
           (unsigned long long)info->auto_interval, (unsigned long long)info->last_rotation,
           (unsigned long long)(info->auto_interval ? ks_auto_due(info->last_rotation, info->auto_interval) : 0),
           (unsigned long long)info->map_size, (unsigned long long)info->n_objects);
    if (rot->have_readers) {
        char comm[64];
        int here = rot->readers.active ? reader_here(cfg->keystore, rot->readers.oldest_pid, comm, sizeof(comm)) : -1;
        printf("  \"readers\": {\"active\": %u, \"oldest_pid\": %ld, \"oldest_pid_here\": %s, "
               "\"oldest_commits_behind\": %llu},\n",
               rot->readers.active, rot->readers.oldest_pid, here == 1 ? "true" : here == 0 ? "false" : "null",
               (unsigned long long)rot->readers.oldest_behind);
    } else
        printf("  \"readers\": null,\n");
    printf("  \"tokens\": [");
    for (size_t i = 0; i < n; i++) {
        printf("%s\n    {\"slot\": %lu, \"label\": ", i ? "," : "", (unsigned long)rows[i].id);
        admin_json_str(stdout, rows[i].label);
        printf(", \"objects\": %llu, \"user_pin\": \"%s\", \"private_objects\": \"%s\"}",
               (unsigned long long)rows[i].objects, pin_state(rows[i].flags), rows[i].binding_json);
    }
    printf("%s]\n}\n", n ? "\n  " : "");
}

static void print_text(const ks_config *cfg, const ks_mkey *mk, const ks_info *info, const rot_view *rot,
                       const fleet_view *fleet, const token_row *rows, size_t n)
{
    char kcv[2 * KS_KCV_LEN + 1];

    ks_kcv_hex(info->kcv, kcv);
    printf("Keystore:        %s\n", cfg->keystore);
    printf("Configuration:   %s\n", cfg->source ? cfg->source : "(built-in defaults)");
    if (cfg->backend && strcmp(cfg->backend, "lmdb") != 0)
        printf("Backend:         %s (shared by the hosts below; this host is %s)\n", cfg->backend,
               ks_host_name(cfg, (char[256]){0}, 256));
    printf("Format version:  %u\n", info->format_version);
    printf("Master key:      %s (KCV %s)\n", mk->is_default ? "default" : mk->source, kcv);
    if (mk->is_default)
        printf("  WARNING: the built-in default master key is the same on every install and\n"
               "  protects nothing against someone who copies the keystore. Create a key\n"
               "  file of your own: p11mk-admin init --generate-key FILE (new keystores).\n");
    printf("Epoch:           %u\n", info->epoch);
    printf("Rotation:        %s", ks_rot_state_name(info->rot_state));
    if (info->new_epoch) {
        char nk[2 * KS_KCV_LEN + 1];
        ks_kcv_hex(info->new_kcv, nk);
        printf(" (new key staged as epoch %u, KCV %s%s)", info->new_epoch, nk,
               info->rot_state == KS_ROT_PENDING ? "; records stay under the current key until every host below "
                                                   "holds it"
                                                 : "");
    }
    if (rot->step == 1)
        printf("\n                 a step is running: %s", rot->holder[0] ? rot->holder : "holder unknown"); /* printable: step_look */
    else if (rot->step == 0) /* a rewrap or an abort ends in another state: one was stopped */
        printf("\n                 no step is running%s; %s",
               info->rot_state == KS_ROT_REWRAP || info->rot_state == KS_ROT_ABORTING
                   ? " (the last one stopped before it ended)"
                   : "",
               ks_rot_busy_advice(info->rot_state));
    printf("\nHistory:         %zu retired key%s%s\n", rot->v.n_history, rot->v.n_history == 1 ? "" : "s",
           rot->v.n_history ? " (newest first; backups sealed under them can be restored):" : "");
    for (size_t i = 0; i < rot->v.n_history; i++) {
        char hk[2 * KS_KCV_LEN + 1], when[64];
        ks_kcv_hex(rot->v.history[i].kcv, hk);
        admin_format_time(rot->v.history[i].retired, when, sizeof(when));
        if (i == 5 && rot->v.n_history > 6) {
            printf("  ... %zu more ('p11mk-admin status --json' lists them all)\n", rot->v.n_history - 5);
            break;
        }
        printf("  epoch %-6u KCV %s  retired %s%s\n", rot->v.history[i].epoch, hk, when,
               rot->v.history[i].aborted ? " (aborted rotation)" : "");
    }
    {
        char last[64], next[64], every[32];
        admin_format_time(info->last_rotation, last, sizeof(last));
        if (info->auto_interval) {
            admin_format_duration(info->auto_interval, every, sizeof(every));
            admin_format_time(ks_auto_due(info->last_rotation, info->auto_interval), next, sizeof(next));
            printf("Auto-update:     every %s, next due %s\n", every, next);
        } else {
            printf("Auto-update:     off\n");
        }
        printf("Last rotation:   %s\n", last);
    }
    printf("Records:        ");
    for (size_t i = 0; i < rot->n; i++)
        printf(" %llu under epoch %u%s", (unsigned long long)rot->counts[i], rot->epochs[i], i + 1 < rot->n ? "," : "");
    printf("%s\n", rot->n ? "" : " none");
    printf("%s %llu MiB\n", cfg->backend && strcmp(cfg->backend, "lmdb") != 0 ? "Storage size:   " : "Map size:       ",
           (unsigned long long)(info->map_size >> 20));
    if (rot->have_readers && rot->readers.oldest_behind >= READER_BEHIND_TOLD) {
        char comm[64];
        int here = reader_here(cfg->keystore, rot->readers.oldest_pid, comm, sizeof(comm));
        printf("Readers:         the oldest open read (pid %ld%s%s) sees the keystore as it was %llu commits ago: the\n"
               "                 pages written since cannot be reused until it ends, so the file grows with every\n"
               "                 write (a backup or verify at work, or a process stopped or stuck inside a read)\n",
               rot->readers.oldest_pid, here == 1 ? ", " : "",
               here == 1 ? comm
               : here == 0 ? " as its own PID namespace numbers it: this system's process of that number has no read "
                             "open on the keystore; the reader may run in a container"
                           : " as LMDB recorded it: in a container, the number the reader's own namespace gave it",
               (unsigned long long)rot->readers.oldest_behind);
    }
    if (cfg->backend && strcmp(cfg->backend, "lmdb") != 0)
        hosts_text(info, fleet);
    printf("Tokens:          %zu (%llu objects)\n", n, (unsigned long long)info->n_objects);
    for (size_t i = 0; i < n; i++)
        printf("  slot %-4lu %-32s %8llu objects  user PIN: %s\n"
               "            private objects' values %s\n", (unsigned long)rows[i].id, rows[i].label,
               (unsigned long long)rows[i].objects, pin_state(rows[i].flags), rows[i].binding);
}

int admin_status(const admin_opts *o)
{
    tok_ctx *ctx = NULL;
    token_row *rows = NULL;
    ks_info info;
    size_t n;

    if (tok_ctx_open(TOK_CTX_STDERR, &ctx) != CKR_OK)
        return admin_exit_for_open(); /* tok_ctx_open already printed the reason */
    if (ks_get_info(tok_ctx_store(ctx), &info) != KS_OK) {
        admin_error("cannot read keystore metadata in %s", tok_ctx_config(ctx)->keystore);
        tok_ctx_close(ctx);
        return EXIT_KEYSTORE;
    }
    n = collect_tokens(ctx, &rows);
    rot_view rot = {.n = 0};
    ks_rot_count(tok_ctx_store(ctx), rot.epochs, rot.counts, 8, &rot.n);
    const ks_config *cfg = tok_ctx_config(ctx);
    step_look(cfg, &info, &rot);
    rot.have_readers = ks_readers(tok_ctx_store(ctx), &rot.readers) == KS_OK;
    ks_mk *m = NULL;
    ks_err err = KS_ERR_INIT;
    fleet_view fleet = {0};
    if (ks_mk_open(cfg, &m, &err) != KS_OK || ks_mk_view_get(m, &rot.v, &err) != KS_OK)
        admin_error("cannot read the master-key history: %s", err.msg[0] ? err.msg : "unknown error");
    else if (ks_mk_hosts(m, &fleet.h, &fleet.n, &err) != KS_OK) {
        admin_error("%s", err.msg);
        fleet.failed = true;
    }
    if (o->json)
        print_json(cfg, tok_ctx_mkey(ctx), &info, &rot, &fleet, rows, n);
    else
        print_text(cfg, tok_ctx_mkey(ctx), &info, &rot, &fleet, rows, n);
    free(fleet.h);
    ks_mk_view_free(&rot.v);
    ks_mk_close(m);
    free(rows);
    tok_ctx_close(ctx);
    return EXIT_OK;
}

/* ---- version ------------------------------------------------------------------ */

static const char suite[] = "records AES-256-GCM; keys HKDF-SHA256; PINs scrypt (N=2^14, r=8); "
                            "master key passphrases scrypt (N=2^15, r=8); indexes HMAC-SHA256";

int admin_version(const admin_opts *o)
{
    tok_ctx *ctx = NULL;
    token_row *rows = NULL;
    ks_info info;
    size_t n = 0;
    bool have = false;

    /* The keystore's part is best effort: the program's versions print anyway. */
    ks_log_setup("stderr", KS_LOG_ERROR, "p11mk-admin");
    if (tok_ctx_open(0, &ctx) == CKR_OK && ks_get_info(tok_ctx_store(ctx), &info) == KS_OK) {
        have = true;
        n = collect_tokens(ctx, &rows);
    }
    if (o->json) {
        printf("{\n  \"program\": \"%s\",\n  \"keystore_format_supported\": %u,\n  \"suite\": ", P11MK_VERSION, KS_FORMAT);
        admin_json_str(stdout, suite);
        if (have) {
            printf(",\n  \"keystore\": {\"path\": ");
            admin_json_str(stdout, tok_ctx_config(ctx)->keystore);
            printf(", \"format\": %u, \"epoch\": %u, \"tokens\": [", info.format_version, info.epoch);
            for (size_t i = 0; i < n; i++) {
                printf("%s{\"slot\": %lu, \"label\": ", i ? ", " : "", (unsigned long)rows[i].id);
                admin_json_str(stdout, rows[i].label);
                printf(", \"format\": %u, \"epoch\": %u, \"objects\": %llu}", info.format_version, info.epoch,
                       (unsigned long long)rows[i].objects);
            }
            printf("]}");
        }
        printf("\n}\n");
    } else {
        printf("p11mk-admin %s\nkeystore format %u (reads 1 and %u)\n%s\n", P11MK_VERSION, KS_FORMAT, KS_FORMAT, suite);
        if (have) {
            printf("keystore %s: format %u, master key epoch %u\n", tok_ctx_config(ctx)->keystore,
                   info.format_version, info.epoch);
            for (size_t i = 0; i < n; i++)
                printf("  slot %-4lu %-32s format %u, epoch %u, %llu objects\n", (unsigned long)rows[i].id,
                       rows[i].label, info.format_version, info.epoch, (unsigned long long)rows[i].objects);
        }
    }
    free(rows);
    if (ctx)
        tok_ctx_close(ctx);
    return EXIT_OK;
}
