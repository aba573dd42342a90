/* SPDX-License-Identifier: Apache-2.0 */
/*
 * consumer.c — a program outside ferry's tree, built against an installed
 * ferry (pkg-config or find_package): WRITEs a pattern into a ferry-bench
 * target's buffer, READs it back and compares the bytes.
 * usage: consumer SEGMENT   (host:port of a running ferry-bench target)
 */
#include <ferry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check(int rc, const char *what)
{
    if (rc)
        fprintf(stderr, "consumer: %s: %s (%s)\n", what, ferry_strerror(rc), ferry_last_error());
    return rc;
}

/* one request of `op` over the whole buffer, waited for */
static int transfer(ferry_engine *e, int op, void *local, ferry_segment_t seg, uint64_t remote, size_t n)
{
    ferry_batch *b;
    struct ferry_request r = {op, local, seg, remote, n};
    int rc = ferry_batch_alloc(e, 1, &b);
    if (!rc)
        rc = ferry_batch_submit(b, &r, 1);
    if (!rc)
        rc = ferry_batch_wait(b, 60000);
    ferry_batch_free(b);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: consumer SEGMENT\n");
        return 2;
    }
    size_t n = 4u << 20;
    unsigned char *out = malloc(n), *back = calloc(1, n);
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)(i * 131 + (i >> 12));
    struct ferry_config cfg;
    ferry_engine *e;
    ferry_segment_t seg;
    struct ferry_buffer_info info;
    size_t count = 0;
    if (check(ferry_config_init(&cfg), "config") || check(ferry_engine_create(&cfg, &e), "engine") ||
        check(ferry_register_memory(e, out, n, "cpu", 0), "register") ||
        check(ferry_register_memory(e, back, n, "cpu", 0), "register") ||
        check(ferry_open_segment(e, argv[1], &seg), argv[1]) ||
        check(ferry_segment_buffers(e, seg, &info, 1, &count), "buffers"))
        return 1;
    if (count < 1 || info.len < n) {
        fprintf(stderr, "consumer: the target publishes no buffer of %zu bytes\n", n);
        return 1;
    }
    if (check(transfer(e, FERRY_WRITE, out, seg, info.addr, n), "write") ||
        check(transfer(e, FERRY_READ, back, seg, info.addr, n), "read"))
        return 1;
    struct ferry_stats st;
    ferry_get_stats(e, &st);
    int same = memcmp(out, back, n) == 0;
    printf("consumer: libferry %s (ferry.h %d.%d.%d), %zu bytes written and read back: %s; tcp wrote %llu\n",
           ferry_version(), FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR, FERRY_VERSION_PATCH, n,
           same ? "same bytes" : "DIFFERENT", (unsigned long long)st.transports[0].bytes_written);
    ferry_engine_destroy(e);
    free(out);
    free(back);
    return same && st.transports[0].bytes_written >= n ? 0 : 1;
}
