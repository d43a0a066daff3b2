/* p11mk-admin: command line entry point. */
#include "admin/admin.h"

#include <getopt.h>
#include <stdarg.h>
#include <string.h>

static const char usage[] =
    "Usage: p11mk-admin [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Administer a p11mk keystore: the LMDB store of a PKCS#11 software token whose\n"
    "objects are sealed under a system master key.\n"
    "\n"
    "Commands:\n"
    "  init [--generate-key FILE]  create the keystore named by the configuration;\n"
    "                              with --generate-key, seal it under a new random\n"
    "                              32-byte key file (mode 0600) instead of the default key\n"
    "  status [--json]             keystore path, format, master key source, epoch,\n"
    "                              tokens with labels and object counts\n"
    "  version                     program and keystore format versions\n"
    "  help                        this text\n"
    "\n"
    "Options:\n"
    "  --json          machine-readable output (status)\n"
    "  -h, --help      this text\n"
    "\n"
    "Configuration: $P11MK_CONF, else ~/.config/p11mk/p11mk.conf, else\n"
    "/etc/p11mk/p11mk.conf, else built-in defaults (keystore in\n"
    "~/.local/share/p11mk, built-in default master key). Keys: keystore,\n"
    "master_key (default | /path/to/keyfile), log, log_level, key_file_mode.\n"
    "\n"
    "Exit codes:\n"
    "  0  success\n"
    "  1  the operation failed; nothing was changed\n"
    "  2  bad command line\n"
    "  3  configuration file error\n"
    "  4  master key missing, refused, or not the keystore's key\n"
    "  5  keystore missing, unreadable or damaged\n";

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

int admin_exit_for_open_error(const char *msg)
{
    if (strncmp(msg, "configuration error", 19) == 0)
        return EXIT_CONFIG;
    if (strncmp(msg, "cannot load the master key", 26) == 0 || strstr(msg, "check value"))
        return EXIT_KEY;
    return EXIT_KEYSTORE;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"json", no_argument, NULL, 'j'},
        {"generate-key", required_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    admin_opts o = {0};
    const char *cmd;
    int c;

    while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage, stdout); return EXIT_OK;
        case 'j': o.json = true; break;
        case 'g': o.generate_key = optarg; break;
        default: fputs("Try 'p11mk-admin --help'.\n", stderr); return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    cmd = argv[optind++];
    /* Options may also follow the command. */
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage, stdout); return EXIT_OK;
        case 'j': o.json = true; break;
        case 'g': o.generate_key = optarg; break;
        default: fputs("Try 'p11mk-admin --help'.\n", stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        admin_error("unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    if (strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "version") == 0) {
        printf("p11mk-admin %s\nkeystore format 1\nrecord sealing AES-256-GCM, keys HKDF-SHA256, PINs scrypt\n",
               P11MK_VERSION);
        return EXIT_OK;
    }
    if (o.generate_key && strcmp(cmd, "init") != 0) {
        admin_error("--generate-key is an option of 'init' only");
        return EXIT_USAGE;
    }
    if (strcmp(cmd, "init") == 0)
        return admin_init(&o);
    if (strcmp(cmd, "status") == 0)
        return admin_status(&o);
    admin_error("unknown command '%s'. Try 'p11mk-admin --help'.", cmd);
    return EXIT_USAGE;
}
