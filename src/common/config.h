/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.h — the library side of the config table (config.c): the core rows,
 * for ferry_config_describe, which appends the plug-ins' own rows.
 */
#ifndef FERRY_CONFIG_H
#define FERRY_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry.h"

/* The rows of config.c's table (static storage), *count of them. */
const struct ferry_config_knob *config_core_knobs(size_t *count);

/* A knob a layer reads itself (a KNOB_DOC row): the environment variable
 * `name` as a plain decimal number from lo to hi (digits only: no sign,
 * space or suffix).  1 when it is unset or empty (or "auto" where auto_ok),
 * *out untouched; 0 with *out set; else FERRY_EINVAL as
 * `NAME="value": wanted`. */
int config_env_number(const char *name, bool auto_ok, uint64_t lo, uint64_t hi, const char *wanted, uint64_t *out);

/* The same rule for a number inside another setting (a port after a
 * colon): text as a plain decimal from lo to hi.  0 with *out set, else -1. */
int config_parse_number(const char *text, uint64_t lo, uint64_t hi, uint64_t *out);

#endif
