/* SPDX-License-Identifier: Apache-2.0 */
/*
 * resolve_cost.c — what bounding a name's look-up by a deadline costs per
 * connect: net.c's net_lookup hands a name to a thread of its own and
 * waits for it until the deadline; the reference is a plain getaddrinfo of
 * the same name, alternated with it in the same run, and so is rev18's way
 * (glibc's resolver threads: getaddrinfo_a + gai_suspend).  An address given as
 * text takes neither (AI_NUMERICHOST, no resolver).
 *
 *   ninja -C build ferry && cc -D_GNU_SOURCE -O2 -Iinclude -Isrc/common bench/resolve_cost.c build/libferry.a \
 *       $(pkg-config --libs libcurl) -lpthread -ldl -lm -o /tmp/resolve_cost && /tmp/resolve_cost localhost 2000
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "net.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "localhost";
    int n = argc > 2 ? atoi(argv[2]) : 2000;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    double plain = 0, bounded = 0, pooled = 0;
    for (int i = 0; i < n; i++) {
        double t0 = now_s();
        if (getaddrinfo(name, "80", &hints, &res) != 0) {
            fprintf(stderr, "%s does not resolve\n", name);
            return 1;
        }
        freeaddrinfo(res);
        plain += now_s() - t0;
        t0 = now_s();
        if (net_lookup(name, 80, net_deadline(5000), &res) != 0)
            return 2;
        freeaddrinfo(res);
        bounded += now_s() - t0;
        t0 = now_s(); /* rev18's way: glibc's resolver threads */
        struct gaicb cb = {.ar_name = name, .ar_service = "80", .ar_request = &hints}, *list[1] = {&cb};
        if (getaddrinfo_a(GAI_NOWAIT, list, 1, NULL) != 0)
            return 3;
        struct timespec limit = {5, 0};
        int r;
        do
            r = gai_suspend((const struct gaicb *const *)list, 1, &limit);
        while (r != 0 && r != EAI_ALLDONE);
        if (gai_error(&cb) != 0)
            return 4;
        freeaddrinfo(cb.ar_result);
        pooled += now_s() - t0;
    }
    printf("%s x%d: getaddrinfo %.1f us, net_lookup (look-up threads) %.1f us (ratio %.2f), getaddrinfo_a + gai_suspend "
           "%.1f us (ratio %.2f)\n", name, n, plain / n * 1e6, bounded / n * 1e6, bounded / plain, pooled / n * 1e6,
           pooled / plain);
    return 0;
}
