/* C_WaitForSlotEvent through the built module (test_module.h's fixture),
 * with other processes changing the keystore's tokens: this program run again
 * as `test_slot_event --token LABEL` initializes a token of that label on the
 * free slot (or re-initializes the one that has it), and `p11mk-admin
 * delete-token` deletes one.
 *
 *   - CKF_DONT_BLOCK: each token initialized, re-initialized or deleted since
 *     C_Initialize or the last event is one event, lowest slot first, then
 *     CKR_NO_EVENT; this process's own C_InitToken counts too; a token made
 *     and deleted between two looks is none;
 *   - blocking: the call waits until another process makes a token, and
 *     returns its slot;
 *   - C_Finalize from another thread ends every blocked call with
 *     CKR_CRYPTOKI_NOT_INITIALIZED at once (this test also runs under
 *     ThreadSanitizer: ./run-tests);
 *   - arguments. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "tests/unit/test_module.h"
#include "tests/unit/test_slots.h"

extern char **environ;
static char self[4096];

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The other process (`--token LABEL`). */
static int child_main(const char *label)
{
    CK_UTF8CHAR l[32];
    if (load_module() != 0 || f->C_Initialize(NULL) != CKR_OK)
        return 1;
    CK_SLOT_ID s = slot_of(label);
    if (s == (CK_SLOT_ID)-1)
        s = slot_of(NULL); /* the free slot */
    pad32(l, label);
    CK_RV rv = f->C_InitToken(s, (CK_UTF8CHAR_PTR)SO, strlen(SO), l);
    if (rv != CKR_OK)
        fprintf(stderr, "C_InitToken %s: 0x%lx\n", label, (unsigned long)rv);
    f->C_Finalize(NULL);
    return rv == CKR_OK ? 0 : 1;
}

static void run(char *const argv[])
{
    pid_t pid;
    int st = 0;
    assert_int_equal(posix_spawn(&pid, argv[0], NULL, NULL, argv, environ), 0);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("%s %s: exit status 0x%x", argv[0], argv[1], st);
}

static void other_init(const char *label)
{
    char *argv[] = {self, "--token", (char *)label, NULL};
    run(argv);
}

static void admin_delete(const char *label)
{
    char *admin = getenv("P11MK_ADMIN");
    if (!admin)
        skip();
    char *argv[] = {admin, "delete-token", "--token", (char *)label, "--yes", NULL};
    run(argv);
}

static CK_SLOT_ID next_event(void)
{
    CK_SLOT_ID s = (CK_SLOT_ID)-1;
    CK(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL));
    return s;
}

static void no_event(void)
{
    CK_SLOT_ID s;
    RV(CKR_NO_EVENT, f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL));
}

static void test_events_dont_block(void **state)
{
    (void)state;
    /* The fixture's own token, made after C_Initialize. */
    assert_int_equal(next_event(), slot);
    no_event();

    other_init("b");
    CK_SLOT_ID b = slot_of("b");
    assert_int_not_equal(b, (CK_SLOT_ID)-1);
    assert_int_equal(next_event(), b);
    no_event();
    other_init("b"); /* re-initialized */
    assert_int_equal(next_event(), b);
    no_event();

    other_init("c");
    other_init("d");
    CK_SLOT_ID c = slot_of("c"), d = slot_of("d");
    assert_true(c < d);
    assert_int_equal(next_event(), c);
    assert_int_equal(next_event(), d);
    no_event();

    admin_delete("b");
    assert_int_equal(next_event(), b);
    no_event();
    CK_TOKEN_INFO ti;
    RV(CKR_SLOT_ID_INVALID, f->C_GetTokenInfo(b, &ti));

    /* Made and deleted between two looks: nothing to report. */
    other_init("e");
    admin_delete("e");
    no_event();

    /* This process's own: re-initializing a token. */
    CK_UTF8CHAR l[32];
    pad32(l, "c");
    CK(f->C_InitToken(c, (CK_UTF8CHAR_PTR)SO, strlen(SO), l));
    assert_int_equal(next_event(), c);
    no_event();

    CK_SLOT_ID s;
    RV(CKR_ARGUMENTS_BAD, f->C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL));
    RV(CKR_ARGUMENTS_BAD, f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, &s));
}

typedef struct {
    pthread_t th;
    CK_RV rv;
    CK_SLOT_ID slot;
    double done; /* when it returned */
    int returned;
} waiter;

static void *wait_thread(void *arg)
{
    waiter *w = arg;
    w->rv = f->C_WaitForSlotEvent(0, &w->slot, NULL);
    w->done = now_s();
    __atomic_store_n(&w->returned, 1, __ATOMIC_RELEASE);
    return NULL;
}

static bool returned_within(waiter *w, double seconds)
{
    double end = now_s() + seconds;
    while (!__atomic_load_n(&w->returned, __ATOMIC_ACQUIRE) && now_s() < end)
        usleep(10000);
    return __atomic_load_n(&w->returned, __ATOMIC_ACQUIRE) != 0;
}

static void test_events_blocking(void **state)
{
    (void)state;
    waiter w = {0};
    assert_int_equal(next_event(), slot);
    assert_int_equal(pthread_create(&w.th, NULL, wait_thread, &w), 0);
    assert_false(returned_within(&w, 0.3)); /* nothing happened: it waits */
    double made = now_s();
    other_init("w");
    if (!returned_within(&w, 10))
        fail_msg("C_WaitForSlotEvent did not return within 10 s of a token made by another process");
    pthread_join(w.th, NULL);
    CK(w.rv);
    assert_int_equal(w.slot, slot_of("w"));
    printf("blocking C_WaitForSlotEvent returned %.0f ms after the other process made its token (it polls every "
           "100 ms)\n",
           (w.done - made) * 1e3);
    no_event();
}

static void test_events_finalize_wakes(void **state)
{
    (void)state;
    waiter w[3] = {{0}};
    assert_int_equal(next_event(), slot);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&w[i].th, NULL, wait_thread, &w[i]), 0);
    for (int i = 0; i < 3; i++)
        assert_false(returned_within(&w[i], 0.1));
    double fin = now_s();
    CK(f->C_Finalize(NULL));
    double after = now_s();
    for (int i = 0; i < 3; i++) {
        if (!returned_within(&w[i], 5))
            fail_msg("C_Finalize did not end a blocked C_WaitForSlotEvent");
        pthread_join(w[i].th, NULL);
        /* Each waiter was told CKR_CRYPTOKI_NOT_INITIALIZED. (That C_Finalize
         * returned only after the waiters left the module cannot be seen from
         * here: a waiter's clock reading comes after its return. ASan and
         * TSan runs of this test catch a waiter still inside.) */
        RV(CKR_CRYPTOKI_NOT_INITIALIZED, w[i].rv);
    }
    printf("C_Finalize ended three blocked C_WaitForSlotEvent calls in %.1f ms\n", (after - fin) * 1e3);
    CK_SLOT_ID s;
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL));
    RV(CKR_CRYPTOKI_NOT_INITIALIZED, f->C_WaitForSlotEvent(0, &s, NULL));
    /* Initialized again: the slots as they are now, no event. */
    CK(f->C_Initialize(NULL));
    no_event();
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--token") == 0)
        return child_main(argv[2]);
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return 1;
    self[n] = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_events_dont_block, start_default, stop),
        cmocka_unit_test_setup_teardown(test_events_blocking, start_default, stop),
        cmocka_unit_test_setup_teardown(test_events_finalize_wakes, start_default, stop),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
