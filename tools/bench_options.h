/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench_options.h — ferry-bench's flags (Mooncake transfer_engine_bench's
 * names), their parsing and checks, and the one way the tool fails.
 * Parsed once by the main thread before any other thread starts.
 */
#ifndef FERRY_BENCH_OPTIONS_H
#define FERRY_BENCH_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define EXIT_VERIFY 3

struct options {
    const char *mode, *local_server_name, *metadata_server, *operation;
    const char *protocol, *segment_id, *device_name, *location;
    const char *report_unit, *nic_priority_matrix, *backend, *pinned;
    uint64_t block_size, batch_size, buffer_size, duration, threads, iterations, idle_seconds, report_precision;
    int64_t gpu_id, npu_id;
    bool use_vram, json, verify, huge_pages, same_block, help, help_env, help_env_markdown;
    bool auto_discovery, init_mem, rotate;
    /* from report_unit: bytes per unit, and its name ("GB" -> 1e9, "GB") */
    double unit_bytes;
    bool unit_bits;
};

/* Prints "ferry-bench: <message>", then for a ferry error rc != 0
 * ": <strerror>: <detail>", and exits with `code`. */
void fail(int code, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
#define usage_error(...) fail(EXIT_USAGE, 0, __VA_ARGS__)
#define die(...) fail(EXIT_RUNTIME, 0, __VA_ARGS__)
#define die_ferry(rc, ...) fail(EXIT_RUNTIME, rc, __VA_ARGS__)

void usage(FILE *f);
void options_defaults(struct options *o);
/* Exits with EXIT_USAGE on an unknown flag or a bad value. */
void parse_args(int argc, char **argv, struct options *o);
/* Checks the combination and resolves --location and --report_unit (and,
 * for rdma without --device_name, --nic_priority_matrix's NICs); exits on a
 * bad one. */
void check_options(struct options *o);

#endif
