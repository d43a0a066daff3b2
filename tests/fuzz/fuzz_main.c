/* A standalone driver for the fuzz targets, so that they run as ordinary
 * tests with gcc (no libFuzzer): every file of the seed corpus, then N
 * deterministic pseudo-random mutations of the seeds (fixed seed; bit flips,
 * byte sets, interesting values, truncation, extension, insertion, deletion,
 * splices between seeds).
 *
 *   fuzz_NAME [-n N] [-s SEED] DIR|FILE...
 *
 * A directory is a seed corpus; with only files (no directory) each file is
 * run once: that is how a crash is replayed. N comes from -n, else
 * $P11MK_FUZZ_ITERS, else the target's default. Before each call the input is
 * written to fuzz-last-input-NAME in $P11MK_FUZZ_OUT (default: the current
 * directory), so that whatever kills the process leaves the input behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_common.h"

#ifndef FUZZ_TARGET
#define FUZZ_TARGET "unknown"
#endif
#ifndef FUZZ_DEFAULT_ITERS
#define FUZZ_DEFAULT_ITERS 20000
#endif
#define FUZZ_MAX_INPUT (64u << 10)

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

typedef struct {
    uint8_t *data;
    size_t len;
    char *name;
} input;

static input *seeds;
static size_t nseeds, capseeds;
static int last_fd = -1;
static char last_path[4096];

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        perror("malloc");
        exit(2);
    }
    return p;
}

static bool read_file(const char *path, uint8_t **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    size_t cap = 4096, n = 0;
    uint8_t *buf;

    if (!f)
        return false;
    buf = xmalloc(cap);
    for (;;) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap)
            break;
        if (cap >= FUZZ_MAX_INPUT * 16)
            break;
        cap *= 2;
        buf = realloc(buf, cap);
        if (!buf) {
            perror("realloc");
            exit(2);
        }
    }
    fclose(f);
    *data = buf;
    *len = n;
    return true;
}

static void add_seed(const char *path)
{
    uint8_t *d;
    size_t n;

    if (!read_file(path, &d, &n)) {
        fprintf(stderr, "fuzz_%s: cannot read %s: %s\n", FUZZ_TARGET, path, strerror(errno));
        exit(2);
    }
    if (nseeds == capseeds) {
        capseeds = capseeds ? capseeds * 2 : 64;
        seeds = realloc(seeds, capseeds * sizeof(*seeds));
        if (!seeds)
            exit(2);
    }
    seeds[nseeds].data = d;
    seeds[nseeds].len = n;
    seeds[nseeds].name = strdup(path);
    nseeds++;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const input *)a)->name, ((const input *)b)->name);
}

static size_t add_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t before = nseeds;

    if (!d) {
        fprintf(stderr, "fuzz_%s: cannot open corpus %s: %s\n", FUZZ_TARGET, dir, strerror(errno));
        exit(2);
    }
    while ((e = readdir(d))) {
        char p[4096];
        struct stat sb;
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            add_seed(p);
    }
    closedir(d);
    /* Directory order is not stable: sort, so that a run is reproducible. */
    qsort(seeds + before, nseeds - before, sizeof(*seeds), cmp_name);
    return nseeds - before;
}

/* The input about to run, left on disk for replay. */
static void save_last(const uint8_t *d, size_t n)
{
    if (last_fd < 0)
        return;
    if (ftruncate(last_fd, 0) != 0 || (n && pwrite(last_fd, d, n, 0) != (ssize_t)n)) {
        fprintf(stderr, "fuzz_%s: cannot write %s\n", FUZZ_TARGET, last_path);
        close(last_fd);
        last_fd = -1;
    }
}

static void run_one(const uint8_t *d, size_t n)
{
    /* A private copy of exactly n bytes: a target reading past the end hits ASan. */
    uint8_t *copy = xmalloc(n);
    if (n)
        memcpy(copy, d, n);
    save_last(copy, n);
    LLVMFuzzerTestOneInput(n ? copy : NULL, n);
    free(copy);
}

/* ---- deterministic mutations ----------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static const uint64_t interesting[] = {
    0, 1, 2, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257,
    512, 1024, 4095, 4096, 4097, 65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff, 0x7fffffffffffffffull,
    0x8000000000000000ull, 0xffffffffffffffffull, 0x40000211, 0x40000212, 0x40000600,
};

typedef struct {
    uint8_t *d;
    size_t n, cap;
} buf;

static void buf_reserve(buf *b, size_t n)
{
    if (n <= b->cap)
        return;
    while (b->cap < n)
        b->cap = b->cap ? b->cap * 2 : 256;
    b->d = realloc(b->d, b->cap);
    if (!b->d)
        exit(2);
}

static void insert_bytes(buf *b, size_t pos, const uint8_t *src, size_t k)
{
    if (b->n + k > FUZZ_MAX_INPUT)
        k = FUZZ_MAX_INPUT - b->n;
    if (!k)
        return;
    buf_reserve(b, b->n + k);
    memmove(b->d + pos + k, b->d + pos, b->n - pos);
    if (src)
        memcpy(b->d + pos, src, k);
    else
        for (size_t i = 0; i < k; i++)
            b->d[pos + i] = (uint8_t)rnd();
    b->n += k;
}

static void mutate_once(buf *b)
{
    size_t pos = below(b->n + 1);

    switch (below(12)) {
    case 0: /* bit flip */
        if (b->n)
            b->d[below(b->n)] ^= (uint8_t)(1u << below(8));
        break;
    case 1: /* random byte */
        if (b->n)
            b->d[below(b->n)] = (uint8_t)rnd();
        break;
    case 2: { /* interesting byte */
        static const uint8_t v[] = {0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x20, 0x40};
        if (b->n)
            b->d[below(b->n)] = v[below(sizeof(v))];
        break;
    }
    case 3: { /* interesting 16/32/64-bit value, either endianness */
        uint64_t v = interesting[below(sizeof(interesting) / sizeof(interesting[0]))];
        size_t w = (size_t)1 << (1 + below(3));
        bool be = below(2);
        if (b->n < w)
            break;
        pos = below(b->n - w + 1);
        for (size_t i = 0; i < w; i++)
            b->d[pos + i] = (uint8_t)(v >> (8 * (be ? w - 1 - i : i)));
        break;
    }
    case 4: /* truncate */
        b->n = below(b->n + 1);
        break;
    case 5: /* extend with random bytes */
        insert_bytes(b, b->n, NULL, 1 + below(64));
        break;
    case 6: /* insert random bytes */
        insert_bytes(b, pos, NULL, 1 + below(16));
        break;
    case 7: /* delete a range */
        if (b->n) {
            size_t k = 1 + below(b->n - pos < 32 ? b->n - pos + 1 : 32);
            if (pos + k > b->n)
                k = b->n - pos;
            memmove(b->d + pos, b->d + pos + k, b->n - pos - k);
            b->n -= k;
        }
        break;
    case 8: { /* duplicate a chunk of itself */
        if (b->n) {
            size_t from = below(b->n), k = 1 + below(b->n - from < 64 ? b->n - from : 64);
            uint8_t tmp[64];
            memcpy(tmp, b->d + from, k);
            insert_bytes(b, pos, tmp, k);
        }
        break;
    }
    case 9: { /* splice: prefix of this + suffix of another seed */
        const input *o = &seeds[below(nseeds)];
        size_t from = below(o->len + 1);
        b->n = pos;
        insert_bytes(b, b->n, o->data + from, o->len - from);
        break;
    }
    case 10: { /* insert a chunk of another seed */
        const input *o = &seeds[below(nseeds)];
        if (o->len) {
            size_t from = below(o->len), k = 1 + below(o->len - from);
            insert_bytes(b, pos, o->data + from, k > 256 ? 256 : k);
        }
        break;
    }
    default: /* small arithmetic on a byte */
        if (b->n)
            b->d[below(b->n)] += (uint8_t)(below(33) - 16);
        break;
    }
}

int main(int argc, char **argv)
{
    unsigned long long iters = FUZZ_DEFAULT_ITERS, seed = 0x5eedf00dULL;
    const char *env = getenv("P11MK_FUZZ_ITERS");
    const char *out = getenv("P11MK_FUZZ_OUT");
    size_t ndirs = 0, nfiles = 0;
    struct timespec t0, t1;
    int opt;

    if (env && *env)
        iters = strtoull(env, NULL, 0);
    if ((env = getenv("P11MK_FUZZ_SEED")) && *env)
        seed = strtoull(env, NULL, 0);
    while ((opt = getopt(argc, argv, "n:s:h")) != -1) {
        switch (opt) {
        case 'n': iters = strtoull(optarg, NULL, 0); break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        default:
            fprintf(stderr, "usage: %s [-n ITERATIONS] [-s SEED] CORPUS_DIR|INPUT_FILE...\n", argv[0]);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "usage: %s [-n ITERATIONS] [-s SEED] CORPUS_DIR|INPUT_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = optind; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            fprintf(stderr, "fuzz_%s: %s: %s\n", FUZZ_TARGET, argv[i], strerror(errno));
            return 2;
        }
        if (S_ISDIR(sb.st_mode)) {
            add_dir(argv[i]);
            ndirs++;
        } else {
            add_seed(argv[i]);
            nfiles++;
        }
    }
    if (!nseeds) {
        fprintf(stderr, "fuzz_%s: no seeds: the corpus is empty\n", FUZZ_TARGET);
        return 2;
    }
    if (!ndirs) /* replay */
        iters = 0;

    snprintf(last_path, sizeof(last_path), "%s/fuzz-last-input-%s", out && *out ? out : ".", FUZZ_TARGET);
    last_fd = open(last_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (last_fd < 0)
        fprintf(stderr, "fuzz_%s: warning: cannot write %s: %s\n", FUZZ_TARGET, last_path, strerror(errno));

    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < nseeds; i++) {
        if (!ndirs)
            fprintf(stderr, "fuzz_%s: running %s (%zu bytes)\n", FUZZ_TARGET, seeds[i].name, seeds[i].len);
        run_one(seeds[i].data, seeds[i].len);
    }

    rng_state = seed ? seed : 1;
    buf b = {NULL, 0, 0};
    for (unsigned long long it = 0; it < iters; it++) {
        const input *s = &seeds[below(nseeds)];
        size_t k = 1 + below(below(4) ? 4 : 16);
        b.n = 0;
        buf_reserve(&b, s->len + 1);
        if (s->len)
            memcpy(b.d, s->data, s->len);
        b.n = s->len;
        for (size_t j = 0; j < k; j++)
            mutate_once(&b);
        run_one(b.d, b.n);
    }
    free(b.d);
    clock_gettime(CLOCK_MONOTONIC, &t1);

    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("fuzz_%s: %zu seeds + %llu mutations = %llu inputs in %.2f s (seed %#llx)\n", FUZZ_TARGET, nseeds,
           iters, (unsigned long long)nseeds + iters, secs, seed);
    if (last_fd >= 0) {
        close(last_fd);
        unlink(last_path); /* finished cleanly: nothing to replay */
    }
    for (size_t i = 0; i < nseeds; i++) {
        free(seeds[i].data);
        free(seeds[i].name);
    }
    free(seeds);
    return 0;
}
