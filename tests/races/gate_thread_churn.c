/* Hostile test of the fork gate's per-thread records: many short-lived
 * threads whose first (and only) calls count in spill and take a record
 * inside the gate, threads that call the module from another pthread key's
 * destructor at exit (one key made before the module's rec_key, whose
 * destructor runs before rec_release, and one made after, whose destructor
 * runs after rec_release and so takes a record again), all while another
 * thread forks without pause (each child checks that the module answers
 * CKR_CRYPTOKI_NOT_INITIALIZED and exits). A counter left above 0 (or a
 * record shared by two threads) makes a fork wait for ever: a round that
 * takes 30 s is a hang (the alarm is set again at each round: the whole
 * run under ThreadSanitizer took 36-54 s alone, over 60 on a loaded
 * machine).
 * ROUNDS (default 100; 300 until a CI run of three lanes, where it took
 * 133 s under ThreadSanitizer) rounds of 6 threads. Exits 1 on a hang or a bad rv. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

static pthread_key_t key_before, key_after;
static atomic_int stop, bad, forks, dtor_calls;

static void dtor(void *p)
{
    CK_INFO info;
    (void)p;
    if (f->C_GetInfo(&info) != CKR_OK)
        atomic_fetch_add(&bad, 1);
    atomic_fetch_add(&dtor_calls, 1);
}

static void *worker(void *arg)
{
    long kind = (long)arg;
    CK_INFO info;
    CK_TOKEN_INFO ti;
    if (kind & 1)
        pthread_setspecific(key_before, (void *)1);
    if (kind & 2)
        pthread_setspecific(key_after, (void *)1);
    if (f->C_GetInfo(&info) != CKR_OK)
        atomic_fetch_add(&bad, 1);
    if ((kind & 4) && f->C_GetTokenInfo(slot, &ti) != CKR_OK)
        atomic_fetch_add(&bad, 1);
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    while (!stop) {
        pid_t c = fork();
        if (c == 0) {
            CK_INFO info;
            _exit(f->C_GetInfo(&info) == CKR_CRYPTOKI_NOT_INITIALIZED ? 0 : 1);
        }
        int st;
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            atomic_fetch_add(&bad, 1);
        atomic_fetch_add(&forks, 1);
    }
    return NULL;
}

int main(void)
{
    int rounds = getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 100;
    pthread_t tf;

    pthread_key_create(&key_before, dtor); /* before the module's rec_key */
    setup();
    pthread_key_create(&key_after, dtor); /* after it */
    hung_message = "gate_thread_churn: hung";
    signal(SIGALRM, on_hang_alarm);
    alarm(30);
    pthread_create(&tf, NULL, forker, NULL);
    for (int r = 0; r < rounds; r++) {
        pthread_t t[6];
        alarm(30);
        for (long k = 0; k < 6; k++)
            pthread_create(&t[k], NULL, worker, (void *)(k + (r & 1) * 6));
        for (int k = 0; k < 6; k++)
            pthread_join(t[k], NULL);
    }
    alarm(30);
    stop = 1;
    pthread_join(tf, NULL);
    /* and once more, with nothing running: the gate must be balanced */
    pid_t c = fork();
    if (c == 0)
        _exit(0);
    int st;
    waitpid(c, &st, 0);
    alarm(0);
    printf("gate_thread_churn: %d rounds, %d forks, %d destructor calls, %d bad\n", rounds, (int)forks,
           (int)dtor_calls, (int)bad);
    teardown();
    return bad != 0;
}
