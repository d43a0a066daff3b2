/* What every benchmark program needs: a monotonic clock in seconds, and a
 * check that stops the program, naming it, at the first failed PKCS#11 call. */
#ifndef P11MK_BENCH_UTIL_H
#define P11MK_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#ifndef BENCH_NAME
#error "define BENCH_NAME (the program's name, for its messages) before including bench_util.h"
#endif

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void check(CK_RV rv, const char *what)
{
    if (rv != CKR_OK) {
        fprintf(stderr, BENCH_NAME ": %s failed: 0x%lx\n", what, (unsigned long)rv);
        exit(1);
    }
}

#endif
