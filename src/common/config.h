/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.h — the library side of the config table (config.c): the core rows,
 * for ferry_config_describe, which appends the plug-ins' own rows.
 */
#ifndef FERRY_CONFIG_H
#define FERRY_CONFIG_H

#include "ferry.h"

/* The rows of config.c's table (static storage), *count of them. */
const struct ferry_config_knob *config_core_knobs(size_t *count);

#endif
