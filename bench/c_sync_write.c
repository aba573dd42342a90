/* SPDX-License-Identifier: Apache-2.0 */
/*
 * c_sync_write.c — the C side of bench/python_overhead.py: the same loop of
 * synchronous single-request transfers that ferry.TransferEngine's
 * transfer_sync_write runs per call (batch alloc, submit, wait, free), timed
 * with nothing else around it, so that Python's figure minus this one is the
 * cost of the binding.  Uses only ferry.h.
 *
 * usage: c_sync_write SEGMENT REMOTE_ADDR ITERATIONS [BLOCK_BYTES] [write|read]
 * prints one JSON line: {"ns_per_call": wall, "cpu_ns_per_call": CPU time of the calling
 * thread, "iterations": N, "block": B, "op": "write"}
 */
#include <ferry.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int die(const char *what, int rc)
{
    fprintf(stderr, "c_sync_write: %s: %s (%s): %s\n", what, ferry_err_name(rc), ferry_strerror(rc),
            ferry_last_error());
    return 1;
}

/* One call's worth of work, exactly as the Python binding does it. */
static int sync_one(ferry_engine *e, const struct ferry_request *q)
{
    ferry_batch *b;
    int rc = ferry_batch_alloc(e, 1, &b);
    if (rc)
        return rc;
    rc = ferry_batch_submit(b, q, 1);
    if (!rc)
        rc = ferry_batch_wait(b, -1);
    ferry_batch_free(b);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s SEGMENT REMOTE_ADDR ITERATIONS [BLOCK_BYTES] [write|read]\n", argv[0]);
        return 2;
    }
    const char *segment = argv[1];
    uint64_t remote = strtoull(argv[2], NULL, 0);
    long iterations = strtol(argv[3], NULL, 0);
    size_t block = argc > 4 ? strtoull(argv[4], NULL, 0) : 4096;
    int op = argc > 5 && strcmp(argv[5], "read") == 0 ? FERRY_READ : FERRY_WRITE;
    if (iterations <= 0 || block == 0)
        return 2;

    ferry_engine *e;
    int rc = ferry_engine_create(NULL, &e);
    if (rc)
        return die("engine_create", rc);
    void *local = mmap(NULL, block, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (local == MAP_FAILED)
        return 1;
    memset(local, 0x5a, block);
    if ((rc = ferry_register_memory(e, local, block, "cpu", 0)))
        return die("register_memory", rc);
    ferry_segment_t seg;
    if ((rc = ferry_open_segment(e, segment, &seg)))
        return die("open_segment", rc);
    struct ferry_request q = {.opcode = op, .source = local, .target = seg, .target_offset = remote, .length = block};

    long warmup = iterations / 10 > 100 ? iterations / 10 : 100;
    for (long i = 0; i < warmup; i++)
        if ((rc = sync_one(e, &q)))
            return die("warm-up transfer", rc);
    double t0 = clock_ns(CLOCK_MONOTONIC), c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < iterations; i++)
        if ((rc = sync_one(e, &q)))
            return die("transfer", rc);
    double per_call = (clock_ns(CLOCK_MONOTONIC) - t0) / (double)iterations;
    double cpu_per_call = (clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0) / (double)iterations;

    printf("{\"ns_per_call\": %.1f, \"cpu_ns_per_call\": %.1f, \"iterations\": %ld, \"block\": %zu, "
           "\"op\": \"%s\"}\n",
           per_call, cpu_per_call, iterations, block, op == FERRY_WRITE ? "write" : "read");
    ferry_unregister_memory(e, local);
    ferry_engine_destroy(e);
    munmap(local, block);
    return 0;
}
