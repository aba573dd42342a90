/* SPDX-License-Identifier: Apache-2.0 */
/*
 * abi.h — the library side of ferry.h's stability promise: structs whose size
 * the caller passes (ferry_config, ferry_stats) are read and written only as
 * far as the caller's header knew them.
 */
#ifndef FERRY_ABI_H
#define FERRY_ABI_H

#include "ferry.h"

/* Fills *full (this library's struct) from a caller's config of
 * given->struct_size bytes: the caller's bytes where it has them, defaults
 * and FERRY_* environment values for knobs it does not know.  Returns 0,
 * FERRY_EINVAL (struct_size not set by ferry_config_init), FERRY_ENOTSUP (a
 * newer caller set knobs this library lacks), or ferry_config_init's error. */
int config_import(struct ferry_config *full, const struct ferry_config *given);

/* Copies *full (this library's stats) into a caller's struct of `size` bytes
 * whose transports[] elements are `transport_size` bytes each; what the caller
 * has and the library lacks is zeroed.  Returns 0 or FERRY_EINVAL. */
int stats_export(const struct ferry_stats *full, struct ferry_stats *out, size_t size, size_t transport_size);

#endif
