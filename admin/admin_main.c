/* p11mk-admin: command line entry point. */
#include "admin.h"
#include "token/tok_admin.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keystore/ks.h"

static const char usage[] =
    "Usage: p11mk-admin [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Administer a p11mk keystore: the LMDB store of a PKCS#11 software token whose\n"
    "objects are sealed under a system master key that can be changed while\n"
    "applications keep running.\n"
    "\n"
    "Keystore:\n"
    "  init [--generate-key FILE]  create the keystore named by the configuration;\n"
    "                              with --generate-key, seal it under a new random\n"
    "                              key file (mode 0600) instead of the default key\n"
    "  status [--json]             keystore, format, master key source and check value,\n"
    "                              epoch, rotation state, tokens with object counts\n"
    "  list [--token LABEL | --slot N] [--json]\n"
    "                              tokens and objects: class, key type, label, id,\n"
    "                              flags, epoch and pkcs11: URI (RFC 7512)\n"
    "  delete-token --token LABEL | --slot N [--yes]\n"
    "                              delete a token with all its objects (asks y/N);\n"
    "                              its slot id is never given to another token\n"
    "  verify                      open every record under its epoch's key; names\n"
    "                              each failing object; non-zero exit on any problem\n"
    "  version [--json]            program, keystore format, KDF and AEAD suite,\n"
    "                              epoch per token (the keystore's, when there is one)\n"
    "  host-remove NAME            a keystore several hosts share (backend =\n"
    "                              postgresql): take a host that left for good out of\n"
    "                              the fleet ('status' lists the hosts and their keys)\n"
    "\n"
    "Master key (the key file named by master_key holds the registers CURRENT,\n"
    "NEW and the history of retired keys):\n"
    "  set-master-key [--parts N] [--passphrase-file F] [--yes]\n"
    "                              enter a new master key twice (no echo), confirm,\n"
    "                              then stage + rewrap + commit\n"
    "  rotate                      the same with a generated key, no questions\n"
    "  stage [--generate | --passphrase | --parts N | --passphrase-file F]\n"
    "                              load NEW (epoch N+1); new and changed records use\n"
    "                              it at once (default: --generate). --parts N: the key\n"
    "                              is entered as N parts (2-9) by different people, each\n"
    "                              twice; no N-1 parts tell anything about the key\n"
    "                              (with --passphrase-file: one part per line)\n"
    "  rewrap [--batch N]          reseal every record from CURRENT to NEW while the\n"
    "                              token stays in use; resumes after an interruption\n"
    "  commit                      NEW becomes CURRENT (epoch N+1); refused until no\n"
    "                              record is left under CURRENT\n"
    "  abort                       discard NEW; records resealed under it go back\n"
    "  clear-history [--keep N] [--before EPOCH] [--yes]\n"
    "                              destroy retired keys (all, or all but the N\n"
    "                              newest, or those of epochs below EPOCH); copies\n"
    "                              sealed under them become unreadable. Nothing else\n"
    "                              ever removes a key from the key file\n"
    "  backup FILE                 a consistent hot copy (compacted), still sealed\n"
    "                              under the current key\n"
    "  restore FILE [--yes]        replace the keystore with a backup or an export\n"
    "                              (verified first; refused while applications use it)\n"
    "  export --to-default FILE    a copy resealed under the built-in default key, to\n"
    "                              move the keystore to a host with another key\n"
    "  auto-update --interval D    rotate to a generated key every D (1h to 3650d:\n"
    "                              30d, 12h, 2w)\n"
    "  auto-update --disable       stop; the current key is kept\n"
    "  auto-update run             rotate if due (idempotent; the p11mk-auto-update\n"
    "                              systemd timer runs it); finishes an interrupted\n"
    "                              rotation first\n"
    "\n"
    "Options:\n"
    "  --json            machine-readable output (status, list, version, rotate,\n"
    "                    rewrap, commit, set-master-key, clear-history, auto-update;\n"
    "                    refused by the other commands)\n"
    "  -q, --quiet       no progress output\n"
    "  -y, --yes         do not ask for confirmation\n"
    "  --wait SECONDS    how long a master-key step waits for another one to\n"
    "                    finish before giving up with exit code 6 (default 10),\n"
    "                    and for an application's write (2 s at least)\n"
    "  --key-file FILE   where to keep the master keys when the keystore is still\n"
    "                    on the built-in default key (default: master.key next to\n"
    "                    the configuration file; the configuration is updated)\n"
    "  -h, --help        this text\n"
    "\n"
    "Configuration: $P11MK_CONF, else ~/.config/p11mk/p11mk.conf, else\n"
    "/etc/p11mk/p11mk.conf, else built-in defaults (keystore in\n"
    "~/.local/share/p11mk, built-in default master key). Keys: keystore,\n"
    "master_key (default | /path/to/keyfile), log, log_level, key_file_mode.\n"
    "\n"
    "Exit codes:\n"
    "  0  success\n"
    "  1  the operation failed or was declined; nothing was changed\n"
    "  2  bad command line (or a passphrase too short or too weak)\n"
    "  3  configuration file error\n"
    "  4  master key missing, refused, damaged, or not the keystore's key\n"
    "  5  keystore missing, unreadable or damaged (verify: records failed)\n"
    "  6  the rotation state does not allow this step (stage twice, commit\n"
    "     before the rewrap finished, abort when idle), another step is running,\n"
    "     or the state changed while you were asked (nothing was written)\n";

void admin_error(const char *fmt, ...)
{
    va_list ap;

    fputs("p11mk-admin: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void admin_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

int admin_exit_for(int rc, const ks_err *err)
{
    if (rc == KS_OK)
        return EXIT_OK;
    if (err && err->area == KS_AREA_CONFIG)
        return EXIT_CONFIG;
    if (err && err->area == KS_AREA_KEY) /* but a full file system or no memory changed nothing */
        return rc == KS_ENOSPC || rc == KS_ENOMEM ? EXIT_FAILED : EXIT_KEY;
    switch (rc) {
    case KS_ESTATE:
    case KS_EBUSY:
    case KS_ECHANGED: return EXIT_STATE;
    case KS_EWRONGKEY:
    case KS_ENOKEY: return EXIT_KEY;
    case KS_ECONFIG: return EXIT_CONFIG;
    case KS_EBADFILE: return EXIT_FAILED; /* the file given, not the keystore */
    case KS_ECORRUPT:
    case KS_EVERSION:
    case KS_ENOTFOUND:
    case KS_EROFS:
    case KS_EPERM:
    case KS_EIO: return EXIT_KEYSTORE;
    default: return EXIT_FAILED; /* a bad argument, no memory, a full file system: nothing was changed */
    }
}

int admin_exit_for_open(void)
{
    const tok_open_error *e = tok_ctx_error();
    return admin_exit_for(e->rc ? e->rc : KS_ENOMEM, &e->err);
}

/* Root must not write into a keystore another user owns (the system keystore
 * is _p11mk's, served by p11mk-server.service as that user): the files a
 * command makes there (the lock, a restored keystore, a new keystore in that
 * user's directory) would be root's, and the owner could not open them. The
 * commands that only read may run as root. Returns EXIT_OK or EXIT_FAILED. */
static int refuse_root_in_others_keystore(const char *cmd)
{
    static const char *const readers[] = {"status", "list", "verify", "version"};
    char path[PATH_MAX];
    struct stat sb;
    ks_config cfg;
    ks_err err = KS_ERR_INIT;
    int rc = EXIT_OK;

    if (geteuid() != 0)
        return EXIT_OK;
    for (size_t i = 0; i < sizeof(readers) / sizeof(readers[0]); i++)
        if (strcmp(cmd, readers[i]) == 0)
            return EXIT_OK;
    if (ks_config_load(&cfg, &err) != KS_OK)
        return EXIT_OK; /* the command itself reports the configuration's error */
    /* The keystore, or the nearest directory above it that exists (init). */
    snprintf(path, sizeof(path), "%s", cfg.keystore);
    while (lstat(path, &sb) != 0) {
        char *slash = strrchr(path, '/');
        if (!slash || slash == path) {
            snprintf(path, sizeof(path), "/");
            if (lstat(path, &sb) != 0)
                sb.st_uid = 0;
            break;
        }
        *slash = '\0';
    }
    if (sb.st_uid != 0) {
        struct passwd *pw = getpwuid(sb.st_uid);
        const char *conf = cfg.source ? cfg.source : "FILE";
        if (pw)
            admin_error("%s belongs to %s: as root, '%s' would leave files there that %s cannot open. Run it as "
                        "that user, keeping the configuration: runuser -u %s -- env P11MK_CONF=%s p11mk-admin %s ...",
                        path, pw->pw_name, cmd, pw->pw_name, pw->pw_name, conf, cmd);
        else
            admin_error("%s belongs to uid %lu: as root, '%s' would leave files there that uid %lu cannot open. "
                        "Run it as that uid, with P11MK_CONF=%s",
                        path, (unsigned long)sb.st_uid, cmd, (unsigned long)sb.st_uid, conf);
        rc = EXIT_FAILED;
    }
    ks_config_free(&cfg);
    return rc;
}

static const struct {
    const char *name;
    int (*fn)(const admin_opts *o);
} commands[] = {
    {"init", admin_init},       {"status", admin_status},
    {"verify", admin_verify},   {"stage", admin_stage},
    {"rewrap", admin_rewrap},   {"commit", admin_commit},
    {"abort", admin_abort},     {"rotate", admin_rotate},
    {"set-master-key", admin_set_master_key}, {"clear-history", admin_clear_history},
    {"auto-update", admin_auto_update},         {"version", admin_version},
    {"backup", admin_backup},   {"restore", admin_restore},
    {"export", admin_export},   {"list", admin_list},
    {"delete-token", admin_delete_token},
    {"host-remove", admin_host_remove},
};

static const struct {
    const char *name, *synopsis, *text;
} command_help[] = {
    {"init", "init [--generate-key FILE]",
     "Create the keystore named by the configuration. With --generate-key, create FILE with a new random\n"
     "master key (mode 0600) and seal the keystore under it; without a configuration file, a per-user one\n"
     "naming both is written. Refuses to touch an existing keystore."},
    {"status", "status [--json]",
     "Keystore, configuration, format, master key source and check value (with a warning for the built-in\n"
     "default key), epoch, rotation state and staged epoch, history size, automatic rotation schedule, last\n"
     "rotation, records per epoch, tokens with object counts and PIN state."},
    {"list", "list [--token LABEL | --slot N] [--json]",
     "Tokens and their objects: class, key type, label, id, flags, epoch and the RFC 7512 pkcs11: URI that\n"
     "other tools accept. A private object's values need the PIN: its flags say values-need-pin."},
    {"delete-token", "delete-token --token LABEL | --slot N [--yes]",
     "Delete a token with all its objects and PINs, after showing what goes and asking y/N. Only a backup\n"
     "made before brings them back. The slot id is never given to another token, so an application still\n"
     "holding it finds no token there rather than someone else's."},
    {"verify", "verify",
     "Open every record under the key of its epoch and check the indexes both ways; name each failing\n"
     "object. Exit 5 if anything fails."},
    {"version", "version [--json]", "Program, keystore format, algorithms; epoch and format per token."},
    {"set-master-key", "set-master-key [--parts N] [--passphrase-file F] [--yes] [--key-file FILE]",
     "Read a new master key (a passphrase of 12 or more characters, twice, without echo; or N parts, each\n"
     "twice), show what will happen, ask y/N, then stage, rewrap and commit. Turns automatic rotation off."},
    {"rotate", "rotate [--quiet] [--json] [--key-file FILE]",
     "Stage a generated key, rewrap and commit, without questions."},
    {"stage", "stage [--generate | --passphrase | --parts N | --passphrase-file F] [--key-file FILE]",
     "Load a new key into the NEW register as epoch N+1. New and changed records are sealed under it at\n"
     "once; records are read under either key."},
    {"rewrap", "rewrap [--batch N] [--quiet] [--json]",
     "Reseal every record from CURRENT to NEW, N records per transaction (default 2000), while the token\n"
     "stays in use. Interrupted by anything, even kill -9, it resumes where it stopped when run again."},
    {"commit", "commit",
     "Make NEW the current key (the epoch advances) and move the old one to the history. Refused while any\n"
     "record is left under CURRENT. Also repairs a key file left behind by an interrupted commit."},
    {"abort", "abort [--batch N] [--quiet]",
     "Withdraw the staged key: records already resealed under it go back to CURRENT. Resumable."},
    {"clear-history", "clear-history [--keep N] [--before EPOCH] [--yes]",
     "Destroy retired keys: all of them, or all but the N newest (--keep), or only those of epochs below\n"
     "EPOCH (--before); both options together narrow it further. Lists them and asks y/N; if the history\n"
     "changes before the answer (a rotation ran), nothing is destroyed (exit 6). Backups and copies sealed\n"
     "under a destroyed key can no longer be opened. Nothing else removes keys from the key file: the\n"
     "history grows by one key per rotation (about 110 bytes) until cleared."},
    {"auto-update", "auto-update --interval DURATION | --disable | run",
     "Rotate to a generated key every DURATION, from 1h to 3650d (units s, m, h, d, w: 30d, 12h, 2w). 'run'\n"
     "finishes an interrupted rotation or abort first, then rotates only when due; it decides under the\n"
     "lifecycle lock, so two timers at once rotate once. The p11mk-auto-update.timer systemd unit calls it.\n"
     "--disable keeps the current key."},
    {"backup", "backup FILE", "Write a consistent, compacted copy of the live keystore, still sealed under its keys."},
    {"restore", "restore FILE [--yes]",
     "Replace the keystore with a backup or an export. The copy is verified and, if sealed under a retired\n"
     "key or the default key, resealed under this host's current key first. Refused while in use."},
    {"host-remove", "host-remove NAME",
     "A keystore shared by several hosts (backend = postgresql): take a host that left for good out of the fleet, "
     "so that rewrap and commit stop waiting for it to load the new key."},
    {"export", "export --to-default FILE",
     "Write a copy resealed under the built-in default key, to move the keystore to a host with another key."},
};

static int command_usage(const char *cmd)
{
    for (size_t i = 0; i < sizeof(command_help) / sizeof(command_help[0]); i++)
        if (strcmp(cmd, command_help[i].name) == 0) {
            printf("Usage: p11mk-admin %s\n\n%s\n\nExit codes: see 'p11mk-admin --help'.\n", command_help[i].synopsis,
                   command_help[i].text);
            return EXIT_OK;
        }
    fputs(usage, stdout);
    return EXIT_OK;
}

static int parse_opts(int argc, char **argv, const char *shortopts, admin_opts *o)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"yes", no_argument, NULL, 'y'},
        {"generate", no_argument, NULL, 'G'},
        {"passphrase", no_argument, NULL, 'P'},
        {"generate-key", required_argument, NULL, 'g'},
        {"passphrase-file", required_argument, NULL, 'f'},
        {"key-file", required_argument, NULL, 'k'},
        {"batch", required_argument, NULL, 'b'},
        {"interval", required_argument, NULL, 'i'},
        {"disable", no_argument, NULL, 'D'},
        {"to-default", no_argument, NULL, 'T'},
        {"parts", required_argument, NULL, 'p'},
        {"token", required_argument, NULL, 't'},
        {"slot", required_argument, NULL, 's'},
        {"wait", required_argument, NULL, 'W'},
        {"keep", required_argument, NULL, 'K'},
        {"before", required_argument, NULL, 'B'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        switch (c) {
        case 'h': o->help = true; break;
        case 'j': o->json = true; break;
        case 'q': o->quiet = true; break;
        case 'y': o->yes = true; break;
        case 'G': o->passphrase = false, o->generate = true; break;
        case 'P': o->passphrase = true; break;
        case 'g': o->generate_key = optarg; break;
        case 'f': o->passphrase_file = optarg; break;
        case 'k': o->key_file = optarg; break;
        case 'i':
            if (o->interval) {
                admin_error("--interval is given twice; give it once");
                return EXIT_USAGE;
            }
            o->interval = optarg;
            break;
        case 'D': o->disable = true; break;
        case 'T': o->to_default = true; break;
        case 't': o->token = optarg; break;
        case 's': {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 0);
            if (errno || *end || v == 0 || v > UINT32_MAX) {
                admin_error("--slot takes a slot id as 'p11mk-admin list' shows it");
                return EXIT_USAGE;
            }
            o->slot = v;
            break;
        }
        case 'W': {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-' || v > 86400) {
                admin_error("--wait takes a number of seconds from 0 to 86400");
                return EXIT_USAGE;
            }
            o->wait_s = (int)v;
            break;
        }
        case 'K': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-' || v > SIZE_MAX) {
                admin_error("--keep takes a number of retired keys to keep (0 or more)");
                return EXIT_USAGE;
            }
            o->has_keep = true;
            o->keep = (size_t)v;
            break;
        }
        case 'B': {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-' || v == 0 || v > UINT32_MAX) {
                admin_error("--before takes an epoch number (1 or more), as 'p11mk-admin status' shows them");
                return EXIT_USAGE;
            }
            o->before = (uint32_t)v;
            break;
        }
        case 'p': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || v < 2 || v > 9) {
                admin_error("--parts takes a number of key parts from 2 to 9");
                return EXIT_USAGE;
            }
            o->parts = (unsigned)v;
            break;
        }
        case 'b': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || v == 0 || v > 1000000) {
                admin_error("--batch takes a number of records from 1 to 1000000");
                return EXIT_USAGE;
            }
            o->batch = v;
            break;
        }
        default: fputs("Try 'p11mk-admin --help'.\n", stderr); return EXIT_USAGE;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    admin_opts o = {.wait_s = -1};
    const char *cmd;
    int rc;

    /* This program holds master keys and passphrases: no core dump, and no
     * ptrace by other processes of the same user. */
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    if ((rc = parse_opts(argc, argv, "+hqy", &o)) >= 0)
        return rc >= 100 ? rc - 100 : rc;
    if (o.help) {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    if (optind >= argc) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    cmd = argv[optind++];
    /* Options may also follow the command. */
    if ((rc = parse_opts(argc, argv, "hqy", &o)) >= 0)
        return rc >= 100 ? rc - 100 : rc;
    if (strcmp(cmd, "auto-update") == 0 && optind < argc && strcmp(argv[optind], "run") == 0) {
        o.run = true;
        optind++;
        if ((rc = parse_opts(argc, argv, "hqy", &o)) >= 0)
            return rc >= 100 ? rc - 100 : rc;
    }
    if ((strcmp(cmd, "backup") == 0 || strcmp(cmd, "restore") == 0 || strcmp(cmd, "export") == 0 ||
         strcmp(cmd, "host-remove") == 0) &&
        optind < argc) {
        o.file = argv[optind++];
        if ((rc = parse_opts(argc, argv, "hqy", &o)) >= 0)
            return rc >= 100 ? rc - 100 : rc;
    }
    if (o.help)
        return command_usage(cmd);
    if (optind < argc) {
        admin_error("unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    if (strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    /* --json where a command has a JSON form: not text on the standard output a program reads as JSON */
    static const char *const json_cmds[] = {"status", "list", "version", "rotate", "rewrap", "commit",
                                            "set-master-key", "clear-history", "auto-update"};
    bool json_ok = false;
    for (size_t i = 0; i < sizeof(json_cmds) / sizeof(json_cmds[0]); i++)
        json_ok |= strcmp(cmd, json_cmds[i]) == 0;
    if (o.json && !json_ok) {
        admin_error("'%s' has no JSON output; --json is for status, list, version, rotate, rewrap, commit, "
                    "set-master-key, clear-history and auto-update", cmd);
        return EXIT_USAGE;
    }
    if (o.generate_key && strcmp(cmd, "init") != 0) {
        admin_error("--generate-key is an option of 'init' only");
        return EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return (rc = refuse_root_in_others_keystore(cmd)) != EXIT_OK ? rc : commands[i].fn(&o);
    admin_error("unknown command '%s'. Try 'p11mk-admin --help'.", cmd);
    return EXIT_USAGE;
}
