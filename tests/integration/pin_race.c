/* pin_race: a PKCS#11 application for the PIN lock-out tests.
 *
 *   pin_race MODULE LABEL procs N WHO PIN     N processes, each with its own
 *                                             C_Initialize and session, call
 *                                             C_Login(WHO, PIN) at the same time
 *   pin_race MODULE LABEL threads N WHO PIN   the same with N threads of one
 *                                             process, a session each
 *   pin_race MODULE LABEL login WHO PIN       one C_Login
 *   pin_race MODULE LABEL killwatch WHO PIN DATAMDB
 *                                             a child calls C_Login(WHO, PIN);
 *                                             it is killed (SIGKILL) as soon as
 *                                             the keystore file DATAMDB is
 *                                             modified
 *   pin_race MODULE LABEL badargs DATAMDB     C_Login (user and SO) with a NULL
 *                                             PIN and PINs of bad lengths: the
 *                                             right error, no keystore write,
 *                                             no PIN flag set
 *   pin_race MODULE LABEL tokinfo             the PIN flags of the token
 *   pin_race MODULE LABEL initrace N PIN      N processes call C_InitToken on the
 *                                             free slot at once, labeling it
 *                                             LABEL, each with its own SO PIN
 *
 * In procs and initrace, PIN_RACE_CONF (if set) is each process's P11MK_CONF,
 * "{i}" replaced by its index: processes as if on hosts of their own.
 *
 * WHO is "user" or "so". In procs and threads, "{i}" in PIN is replaced by
 * the index of the process or thread (0..N-1), for distinct PINs.
 *
 * Output (one line, stdout):
 *   procs, threads, initrace
 *                   the answers counted by return code, sorted by name:
 *                   "CKR_PIN_INCORRECT=10 CKR_PIN_LOCKED=30"; a process that
 *                   died without an answer counts as NO_ANSWER
 *   login           the return code's name: "CKR_PIN_INCORRECT"
 *   killwatch       "write_before_answer=yes|no answer=CKR_...|none killed=yes|no":
 *                   whether DATAMDB was modified before the child answered
 *                   (then it is killed at once), and the answer, if it gave one
 *   badargs         one line per call "user NULL/0 CKR_ARGUMENTS_BAD ok", then
 *                   "keystore_written=yes|no" and "flags: ..."
 *   tokinfo         "flags: USER_PIN_COUNT_LOW USER_PIN_FINAL_TRY ..." (the six
 *                   PIN flags that are set) or "flags: none"
 *
 * Exit status 0 when the calls could be made (whatever C_Login answered);
 * badargs: 1 when an answer, a write or a flag is not as expected; 2 on a
 * setup error (module, slot, session, fork, pipe). */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "client_util.h"

#define MAX_N 1024
#define NO_ANSWER ((CK_RV)-1) /* a process that died before it answered */

static CK_FUNCTION_LIST *f;
static const char *module_path;

static _Noreturn void die(const char *what, CK_RV rv)
{
    fprintf(stderr, "pin_race: %s failed: 0x%lx\n", what, (unsigned long)rv);
    exit(2);
}

static _Noreturn void die_errno(const char *what)
{
    fprintf(stderr, "pin_race: %s: %s\n", what, strerror(errno));
    exit(2);
}

static const char *rv_name(CK_RV rv)
{
    static const struct {
        CK_RV rv;
        const char *name;
    } names[] = {
        {CKR_OK, "CKR_OK"},
        {CKR_HOST_MEMORY, "CKR_HOST_MEMORY"},
        {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
        {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"},
        {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
        {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
        {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY"},
        {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED"},
        {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
        {CKR_PIN_INVALID, "CKR_PIN_INVALID"},
        {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE"},
        {CKR_PIN_LOCKED, "CKR_PIN_LOCKED"},
        {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
        {CKR_SESSION_READ_ONLY_EXISTS, "CKR_SESSION_READ_ONLY_EXISTS"},
        {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED"},
        {CKR_SESSION_EXISTS, "CKR_SESSION_EXISTS"},
        {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"},
        {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED"},
        {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN"},
        {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
        {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED"},
        {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID"},
        {CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN"},
        {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
    };
    static char buf[32];

    if (rv == NO_ANSWER)
        return "NO_ANSWER";
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].rv == rv)
            return names[i].name;
    snprintf(buf, sizeof(buf), "0x%lx", (unsigned long)rv);
    return buf;
}

static CK_USER_TYPE parse_who(const char *s)
{
    if (strcmp(s, "user") == 0)
        return CKU_USER;
    if (strcmp(s, "so") == 0)
        return CKU_SO;
    fprintf(stderr, "pin_race: WHO must be user or so, not %s\n", s);
    exit(2);
}

/* The PIN of process or thread i: "{i}" in the template becomes i. */
static void make_pin(const char *tmpl, unsigned long i, char *out, size_t n)
{
    const char *mark = strstr(tmpl, "{i}");

    if (!mark)
        snprintf(out, n, "%s", tmpl);
    else
        snprintf(out, n, "%.*s%lu%s", (int)(mark - tmpl), tmpl, i, mark + 3);
}

static void load_module(void)
{
    CK_RV (*get)(CK_FUNCTION_LIST **);
    void *mod = dlopen(module_path, RTLD_NOW);

    if (!mod || !(get = (CK_RV(*)(CK_FUNCTION_LIST **))dlsym(mod, "C_GetFunctionList"))) {
        fprintf(stderr, "pin_race: cannot load %s: %s\n", module_path, dlerror());
        exit(2);
    }
    if (get(&f) != CKR_OK)
        die("C_GetFunctionList", CKR_GENERAL_ERROR);
}

static CK_RV initialize(void)
{
    CK_C_INITIALIZE_ARGS args;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    return f->C_Initialize(&args);
}

#define find_slot(label) client_find_slot(f, "pin_race", (label))

/* C_Initialize and a read-write session on the token; false (with a
 * message) on failure. */
static bool open_token(const char *label, CK_SLOT_ID *slot, CK_SESSION_HANDLE *s)
{
    CK_RV rv = initialize();

    if (rv != CKR_OK) {
        fprintf(stderr, "pin_race: C_Initialize failed: 0x%lx\n", (unsigned long)rv);
        return false;
    }
    if (!(*slot = find_slot(label)))
        return false;
    rv = f->C_OpenSession(*slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
    if (rv != CKR_OK) {
        fprintf(stderr, "pin_race: C_OpenSession failed: 0x%lx\n", (unsigned long)rv);
        return false;
    }
    return true;
}

static CK_RV login(CK_SESSION_HANDLE s, CK_USER_TYPE who, const char *pin)
{
    return f->C_Login(s, who, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
}

/* ---- counting answers ------------------------------------------------- */

struct tally {
    CK_RV rv[MAX_N];
    size_t n;
};

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* "NAME=count ..." sorted by name. */
static void print_tally(const struct tally *t)
{
    static char names[MAX_N][40];
    size_t n = t->n;

    for (size_t i = 0; i < n; i++)
        snprintf(names[i], sizeof(names[i]), "%s", rv_name(t->rv[i]));
    qsort(names, n, sizeof(names[0]), cmp_name);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && strcmp(names[j], names[i]) == 0)
            j++;
        printf("%s%s=%zu", i ? " " : "", names[i], j - i);
        i = j;
    }
    printf("\n");
}

static unsigned long parse_n(const char *s)
{
    char *end;
    unsigned long n = strtoul(s, &end, 10);

    if (*end || n == 0 || n > MAX_N) {
        fprintf(stderr, "pin_race: N must be 1..%d\n", MAX_N);
        exit(2);
    }
    return n;
}

/* ---- procs: N processes released together ----------------------------- */

struct answer {
    uint32_t idx;
    uint32_t pad;
    uint64_t rv;
};

/* One whole answer from the pipe; false at its end (or on an error). */
static bool read_answer(int fd, struct answer *a)
{
    size_t have = 0;
    while (have < sizeof(*a)) {
        ssize_t r = read(fd, (char *)a + have, sizeof(*a) - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        have += (size_t)r;
    }
    return true;
}

static void write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;

    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(3);
        p += w;
        n -= (size_t)w;
    }
}

/* A child: set up, say 'R' (or 'E' on failure), wait until the parent closes
 * the go pipe, log in once, send the answer. Never returns. */
/* initrace: the children initialize the free slot instead of logging in. */
static bool init_race;

/* The free slot (listed last) after C_Initialize; 0 on failure. */
static CK_SLOT_ID free_slot(void)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;

    if (initialize() != CKR_OK || f->C_GetSlotList(CK_FALSE, slots, &n) != CKR_OK || n == 0)
        return 0;
    return slots[n - 1];
}

static CK_RV init_token(CK_SLOT_ID slot, const char *label, const char *pin)
{
    CK_UTF8CHAR l32[32];

    memset(l32, ' ', sizeof(l32));
    memcpy(l32, label, strlen(label) < 32 ? strlen(label) : 32);
    return f->C_InitToken(slot, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin), l32);
}

static _Noreturn void race_child(const char *label, unsigned long idx, CK_USER_TYPE who, const char *pin, int ready, int go,
                       int answers)
{
    CK_SLOT_ID slot = 0;
    CK_SESSION_HANDLE s = 0;
    char c;

    /* PIN_RACE_CONF: each process's configuration ("{i}" its index), as
     * if each ran on a host of its own. */
    const char *conf = getenv("PIN_RACE_CONF");
    if (conf) {
        char path[4096];
        make_pin(conf, idx, path, sizeof(path));
        setenv("P11MK_CONF", path, 1);
    }
    if (init_race ? !(slot = free_slot()) : !open_token(label, &slot, &s)) {
        write_all(ready, "E", 1);
        _exit(2);
    }
    write_all(ready, "R", 1);
    close(ready);
    while (read(go, &c, 1) < 0 && errno == EINTR)
        ;
    struct answer a = {(uint32_t)idx, 0, (uint64_t)(init_race ? init_token(slot, label, pin) : login(s, who, pin))};
    write_all(answers, &a, sizeof(a));
    f->C_Finalize(NULL);
    _exit(0);
}

static int mode_procs(const char *label, unsigned long n, CK_USER_TYPE who, const char *tmpl)
{
    int ready[2], go[2], answers[2];
    pid_t pids[MAX_N];
    struct tally t = {.n = n};
    unsigned long got_ready = 0, errors = 0;
    char c;

    if (pipe(ready) || pipe(go) || pipe(answers))
        die_errno("pipe");
    for (unsigned long i = 0; i < n; i++) {
        char pin[300];
        make_pin(tmpl, i, pin, sizeof(pin));
        pids[i] = fork();
        if (pids[i] < 0)
            die_errno("fork");
        if (pids[i] == 0) {
            close(ready[0]);
            close(go[1]);
            close(answers[0]);
            race_child(label, i, who, pin, ready[1], go[0], answers[1]);
        }
    }
    close(ready[1]);
    close(go[0]);
    close(answers[1]);
    /* Every child is ready (or failed): release them all at once. */
    while (got_ready < n) {
        ssize_t r = read(ready[0], &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got_ready++;
        if (c != 'R')
            errors++;
    }
    close(go[1]);
    for (unsigned long i = 0; i < n; i++)
        t.rv[i] = NO_ANSWER;
    for (;;) {
        struct answer a;
        if (!read_answer(answers[0], &a))
            break;
        if (a.idx < n)
            t.rv[a.idx] = (CK_RV)a.rv;
    }
    for (unsigned long i = 0; i < n; i++)
        while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
            ;
    if (errors || got_ready < n) {
        fprintf(stderr, "pin_race: %lu of %lu processes could not set up\n", errors + (n - got_ready), n);
        return 2;
    }
    print_tally(&t);
    return 0;
}

/* ---- threads: N threads of one process released together -------------- */

struct racer {
    pthread_t th;
    CK_SLOT_ID slot;
    CK_USER_TYPE who;
    char pin[300];
    CK_RV rv;
    bool setup_failed;
};

static pthread_barrier_t barrier;

static void *race_thread(void *arg)
{
    struct racer *r = arg;
    CK_SESSION_HANDLE s = 0;
    CK_RV rv = f->C_OpenSession(r->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);

    if (rv != CKR_OK) {
        fprintf(stderr, "pin_race: C_OpenSession failed: 0x%lx\n", (unsigned long)rv);
        r->setup_failed = true;
    }
    pthread_barrier_wait(&barrier); /* also when setup failed: the others wait for every thread */
    r->rv = r->setup_failed ? NO_ANSWER : login(s, r->who, r->pin);
    return NULL;
}

static int mode_threads(const char *label, unsigned long n, CK_USER_TYPE who, const char *tmpl)
{
    static struct racer racers[MAX_N];
    static struct tally t;
    CK_SLOT_ID slot;
    CK_RV rv = initialize();
    bool failed = false;

    if (rv != CKR_OK)
        die("C_Initialize", rv);
    if (!(slot = find_slot(label)))
        return 2;
    if (pthread_barrier_init(&barrier, NULL, (unsigned)n) != 0)
        die("pthread_barrier_init", CKR_GENERAL_ERROR);
    for (unsigned long i = 0; i < n; i++) {
        racers[i].slot = slot;
        racers[i].who = who;
        make_pin(tmpl, i, racers[i].pin, sizeof(racers[i].pin));
        if (pthread_create(&racers[i].th, NULL, race_thread, &racers[i]) != 0)
            die("pthread_create", CKR_GENERAL_ERROR); /* the barrier would never open */
    }
    t.n = n;
    for (unsigned long i = 0; i < n; i++) {
        pthread_join(racers[i].th, NULL);
        t.rv[i] = racers[i].rv;
        failed |= racers[i].setup_failed;
    }
    pthread_barrier_destroy(&barrier);
    f->C_Finalize(NULL);
    if (failed)
        return 2;
    print_tally(&t);
    return 0;
}

/* ---- killwatch: kill the child at the keystore's first modification ---- */

/* Read and discard every queued inotify event; the number of events read. */
static unsigned long drain_events(int ino)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    unsigned long n = 0;

    for (;;) {
        ssize_t r = read(ino, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return n;
        for (ssize_t off = 0; off < r;) {
            const struct inotify_event *e = (const struct inotify_event *)(buf + off);
            n++;
            off += (ssize_t)(sizeof(*e) + e->len);
        }
    }
}

static int mode_killwatch(const char *label, CK_USER_TYPE who, const char *pin, const char *datamdb)
{
    int ready[2], go[2], answers[2];
    int ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    bool wrote = false, killed = false, answered = false;
    CK_RV rv = NO_ANSWER;
    pid_t pid;
    char c = 0;

    if (ino < 0)
        die_errno("inotify_init1");
    if (inotify_add_watch(ino, datamdb, IN_MODIFY) < 0)
        die_errno(datamdb);
    if (pipe(ready) || pipe(go) || pipe(answers))
        die_errno("pipe");
    pid = fork();
    if (pid < 0)
        die_errno("fork");
    if (pid == 0) {
        close(ready[0]);
        close(go[1]);
        close(answers[0]);
        race_child(label, 0, who, pin, ready[1], go[0], answers[1]);
    }
    close(ready[1]);
    close(go[0]);
    close(answers[1]);
    while (read(ready[0], &c, 1) < 0 && errno == EINTR)
        ;
    if (c != 'R') {
        waitpid(pid, NULL, 0);
        fprintf(stderr, "pin_race: the child could not set up\n");
        return 2;
    }
    /* Writes made while the child opened the keystore are not the login's. */
    drain_events(ino);
    close(go[1]);
    for (;;) {
        struct pollfd p[2] = {{ino, POLLIN, 0}, {answers[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die_errno("poll");
        }
        /* When both are ready, the write counts as first: it may be. */
        if ((p[0].revents & POLLIN) && drain_events(ino)) {
            kill(pid, SIGKILL);
            wrote = killed = true;
            break;
        }
        if (p[1].revents & (POLLIN | POLLHUP))
            break; /* an answer, or the child is gone without one */
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    /* The child is gone: the answer is in the pipe, or never will be. */
    struct answer a;
    if (read_answer(answers[0], &a)) {
        answered = true;
        rv = (CK_RV)a.rv;
    }
    printf("write_before_answer=%s answer=%s killed=%s\n", wrote ? "yes" : "no", answered ? rv_name(rv) : "none",
           killed ? "yes" : "no");
    return 0;
}

/* ---- badargs and tokinfo ---------------------------------------------- */

static const struct {
    CK_FLAGS flag;
    const char *name;
} pin_flags[] = {
    {CKF_USER_PIN_COUNT_LOW, "USER_PIN_COUNT_LOW"}, {CKF_USER_PIN_FINAL_TRY, "USER_PIN_FINAL_TRY"},
    {CKF_USER_PIN_LOCKED, "USER_PIN_LOCKED"},       {CKF_SO_PIN_COUNT_LOW, "SO_PIN_COUNT_LOW"},
    {CKF_SO_PIN_FINAL_TRY, "SO_PIN_FINAL_TRY"},     {CKF_SO_PIN_LOCKED, "SO_PIN_LOCKED"},
};

/* Prints "flags: ..." and returns the PIN flags that are set. */
static CK_FLAGS print_pin_flags(CK_SLOT_ID slot)
{
    CK_TOKEN_INFO ti;
    CK_FLAGS set = 0;
    CK_RV rv = f->C_GetTokenInfo(slot, &ti);

    if (rv != CKR_OK)
        die("C_GetTokenInfo", rv);
    printf("flags:");
    for (size_t i = 0; i < sizeof(pin_flags) / sizeof(pin_flags[0]); i++)
        if (ti.flags & pin_flags[i].flag) {
            printf(" %s", pin_flags[i].name);
            set |= pin_flags[i].flag;
        }
    printf("%s\n", set ? "" : " none");
    return set;
}

static int mode_tokinfo(const char *label)
{
    CK_SLOT_ID slot;
    CK_RV rv = initialize();

    if (rv != CKR_OK)
        die("C_Initialize", rv);
    if (!(slot = find_slot(label)))
        return 2;
    print_pin_flags(slot);
    f->C_Finalize(NULL);
    return 0;
}

static int mode_badargs(const char *label, const char *datamdb)
{
    static char long_pin[257];
    static const struct {
        const char *desc;
        bool null;
        CK_ULONG len;
        CK_RV want;
    } cases[] = {
        {"NULL/0", true, 0, CKR_ARGUMENTS_BAD},     {"NULL/8", true, 8, CKR_ARGUMENTS_BAD},
        {"len3", false, 3, CKR_PIN_LEN_RANGE},      {"len256", false, 256, CKR_PIN_LEN_RANGE},
    };
    static const CK_USER_TYPE whos[] = {CKU_USER, CKU_SO};
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    int ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    bool written;
    int bad = 0;

    if (ino < 0)
        die_errno("inotify_init1");
    if (!open_token(label, &slot, &s))
        return 2;
    memset(long_pin, 'x', 256);
    /* Watched from here on: the calls are synchronous, so any write they
     * make is queued by the time they return. */
    if (inotify_add_watch(ino, datamdb, IN_MODIFY) < 0)
        die_errno(datamdb);
    for (size_t w = 0; w < sizeof(whos) / sizeof(whos[0]); w++)
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            CK_UTF8CHAR_PTR pin = cases[i].null ? NULL : (CK_UTF8CHAR_PTR)long_pin;
            CK_RV rv = f->C_Login(s, whos[w], pin, cases[i].len);
            bool good = rv == cases[i].want;
            printf("%s %s %s %s\n", whos[w] == CKU_SO ? "so" : "user", cases[i].desc, rv_name(rv),
                   good ? "ok" : "WRONG");
            if (!good) {
                printf("  expected %s\n", rv_name(cases[i].want));
                bad = 1;
            }
            if (rv == CKR_OK)
                f->C_Logout(s);
        }
    /* inotify folds repeated events: this tells whether, not how often. */
    written = drain_events(ino) > 0;
    printf("keystore_written=%s\n", written ? "yes" : "no");
    if (written)
        bad = 1;
    if (print_pin_flags(slot))
        bad = 1;
    f->C_Finalize(NULL);
    return bad;
}

/* ---- main --------------------------------------------------------------- */

static _Noreturn void usage(void)
{
    fprintf(stderr, "usage: pin_race MODULE LABEL procs N WHO PIN | threads N WHO PIN | login WHO PIN\n"
                    "       | killwatch WHO PIN DATAMDB | badargs DATAMDB | tokinfo | initrace N PIN\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 4)
        usage();
    module_path = argv[1];
    const char *label = argv[2], *mode = argv[3];
    setvbuf(stdout, NULL, _IOLBF, 0);
    load_module();

    if ((strcmp(mode, "procs") == 0 || strcmp(mode, "threads") == 0) && argc == 7) {
        unsigned long n = parse_n(argv[4]);
        CK_USER_TYPE who = parse_who(argv[5]);
        return mode[0] == 'p' ? mode_procs(label, n, who, argv[6]) : mode_threads(label, n, who, argv[6]);
    }
    if (strcmp(mode, "login") == 0 && argc == 6) {
        CK_USER_TYPE who = parse_who(argv[4]);
        CK_SLOT_ID slot;
        CK_SESSION_HANDLE s;
        if (!open_token(label, &slot, &s))
            return 2;
        CK_RV rv = login(s, who, argv[5]);
        printf("%s\n", rv_name(rv));
        if (rv == CKR_OK)
            f->C_Logout(s);
        f->C_Finalize(NULL);
        return 0;
    }
    if (strcmp(mode, "killwatch") == 0 && argc == 7)
        return mode_killwatch(label, parse_who(argv[4]), argv[5], argv[6]);
    if (strcmp(mode, "badargs") == 0 && argc == 5)
        return mode_badargs(label, argv[4]);
    if (strcmp(mode, "tokinfo") == 0 && argc == 4)
        return mode_tokinfo(label);
    if (strcmp(mode, "initrace") == 0 && argc == 6) {
        init_race = true;
        return mode_procs(label, parse_n(argv[4]), CKU_SO, argv[5]);
    }
    usage();
}
