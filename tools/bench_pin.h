/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench_pin.h — ferry-bench's --pinned host buffers (bench_pin.c).
 */
#ifndef FERRY_BENCH_PIN_H
#define FERRY_BENCH_PIN_H

#include <stddef.h>

/* len bytes of host memory pinned by CUDA the way `how` says ("alloc" or
 * "thp"); exits with a message where it cannot. */
void *bench_pin_alloc(const char *how, size_t len);
void bench_pin_free(const char *how, void *p);

#endif
