/* LD_PRELOAD shim for test_pg_fork_dns: getaddrinfo("slowhost") sleeps
 * SLOW_DNS_MS (a name server that does not answer until the resolver's
 * timeout), then answers 127.0.0.1. Every other name resolves as usual. */
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((visibility("default"))) int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    static int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    if (!real)
        real = (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
    if (node && strcmp(node, "slowhost") == 0) {
        const char *ms = getenv("SLOW_DNS_MS");
        usleep((useconds_t)(ms ? atoi(ms) : 6000) * 1000u);
        node = "127.0.0.1";
    }
    return real(node, service, hints, res);
}
