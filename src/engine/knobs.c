/* SPDX-License-Identifier: Apache-2.0 */
/*
 * knobs.c — ferry_config_describe: the one list of FERRY_* knobs, derived
 * from the config table (common/config.c) and then, registry by registry
 * (devices, transports, metadata backends), from the rows each plug-in's ops
 * table carries for the variables it reads itself.  `ferry-bench --help-env`
 * and the README's table print this list.  Threads: built once (pthread_once),
 * then read-only; owns the static array.
 */
#include <pthread.h>

#include "config.h"
#include "device/device.h"
#include "meta/meta.h"
#include "transport/transport.h"

#define MAX_ROWS 128

static struct ferry_config_knob rows[MAX_ROWS];
static size_t nrows;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void append(const struct ferry_config_knob *k)
{
    for (; k && k->env && nrows < MAX_ROWS; k++)
        rows[nrows++] = *k;
}

static void build(void)
{
    size_t n;
    const struct ferry_config_knob *core = config_core_knobs(&n);
    for (size_t i = 0; i < n && nrows < MAX_ROWS; i++)
        rows[nrows++] = core[i];
    const struct ferry_device_ops *const *dev = ferry_device_list(&n);
    for (size_t i = 0; i < n; i++)
        append(dev[i]->knobs);
    const struct transport_ops *const *tr = transport_list(&n);
    for (size_t i = 0; i < n; i++)
        append(tr[i]->knobs);
    const struct meta_ops *const *meta = meta_list(&n);
    for (size_t i = 0; i < n; i++)
        append(meta[i]->knobs);
}

const struct ferry_config_knob *ferry_config_describe(size_t *count)
{
    pthread_once(&once, build);
    if (count)
        *count = nrows;
    return rows;
}
