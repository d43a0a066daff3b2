/* test_pg.h, the unit tests' way to a PostgreSQL database: with
 * P11MK_TEST_PG_DIR naming a cluster from tests/integration/pg-cluster,
 * test_pg_newdb makes a new database per call and gives its connection
 * string; too small a buffer is refused. Without the variable the test skips
 * (test_pg_cluster runs this program against a cluster of its own and
 * connects to the databases printed here). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "test_pg.h"

static void newdb(void **state)
{
    (void)state;
    char a[512], b[512], tiny[8];
    const char *ci = test_pg_conninfo();

    if (ci)
        printf("P11MK_TEST_PG_CONNINFO: %s\n", ci);
    if (!getenv("P11MK_TEST_PG_DIR")) {
        assert_int_equal(test_pg_newdb(a, sizeof a), 1);
        fprintf(stderr, "note: P11MK_TEST_PG_DIR is not set; no cluster to make databases in\n");
        skip();
    }
    assert_int_equal(test_pg_newdb(a, sizeof a), 0);
    assert_int_equal(test_pg_newdb(b, sizeof b), 0);
    assert_string_not_equal(a, b);
    assert_non_null(strstr(a, "host="));
    assert_non_null(strstr(a, " dbname=p11mk_u"));
    assert_non_null(strstr(a, " user=p11mk"));
    assert_int_equal(test_pg_newdb(tiny, sizeof tiny), -1);
    printf("conninfo: %s\nconninfo: %s\n", a, b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(newdb),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
