/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sim_config.c — the sim device's settings, read once when it loads
 * (sim_load in sim.c, under the device loader's lock): how many devices and
 * how much address space each (FERRY_SIM_DEVICES, FERRY_SIM_DEVICE_MEM), and
 * the tests' fault injection (FERRY_SIM_FAIL_COPY, FERRY_SIM_REFUSE), held
 * copies (FERRY_SIM_HOLD_COPY) and bounded syncs (FERRY_SIM_SYNC_TIMEOUT_MS)
 * into sim_hw.  Owns nothing.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/backend.h"
#include "device/device.h"
#include "err.h"

#include "device/sim_internal.h"

/* Parses "123", "64K", "512M", "16G" (binary units) into bytes. */
static int parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0' || v > (SIZE_MAX >> shift))
        return -1;
    *out = (size_t)v << shift;
    return 0;
}

/* FERRY_SIM_FAIL_COPY="N[:start][,N[:start]...]" into sim_hw.faults. */
static int read_faults(void)
{
    const char *s = getenv("FERRY_SIM_FAIL_COPY");
    sim_hw.nfaults = 0;
    if (s == NULL || *s == '\0')
        return 0;
    for (const char *p = s;;) {
        char *end;
        errno = 0;
        unsigned long long job = *p >= '0' && *p <= '9' ? strtoull(p, &end, 10) : 0;
        if (job == 0 || errno != 0 || sim_hw.nfaults == SIM_MAX_FAULTS)
            break;
        int at_start = strncmp(end, ":start", 6) == 0;
        end += at_start ? 6 : 0;
        sim_hw.faults[sim_hw.nfaults++] = (struct sim_fault){job, at_start};
        if (*end == '\0')
            return 0;
        if (*end != ',')
            break;
        p = end + 1;
    }
    sim_hw.nfaults = 0;
    return ferry_fail(FERRY_EINVAL,
                      "FERRY_SIM_FAIL_COPY=\"%.64s\": want up to %d copy numbers N >= 1, each N "
                      "(fails when run) or N:start (fails at copy_async), comma-separated",
                      s, SIM_MAX_FAULTS);
}

static const char *const op_names[SIM_OPS] = {"host_alloc", "host_func", "write_flag", "mark", "mark_unsupported"};

/* FERRY_SIM_REFUSE="op:N[,op:N...]" into sim_hw.refusals. */
static int read_refusals(void)
{
    const char *s = getenv("FERRY_SIM_REFUSE");
    sim_hw.nrefusals = 0;
    if (s == NULL || *s == '\0')
        return 0;
    for (const char *p = s;;) {
        int op = 0;
        size_t len = 0;
        for (; op < SIM_OPS; op++)
            if (strncmp(p, op_names[op], len = strlen(op_names[op])) == 0 && p[len] == ':')
                break;
        if (op == SIM_OPS || sim_hw.nrefusals == SIM_MAX_FAULTS)
            break;
        char *end;
        errno = 0;
        unsigned long long call = p[len + 1] >= '0' && p[len + 1] <= '9' ? strtoull(p + len + 1, &end, 10) : 0;
        if (call == 0 || errno != 0)
            break;
        sim_hw.refusals[sim_hw.nrefusals++] = (struct sim_refusal){(enum sim_op)op, call};
        if (*end == '\0')
            return 0;
        if (*end != ',')
            break;
        p = end + 1;
    }
    sim_hw.nrefusals = 0;
    return ferry_fail(FERRY_EINVAL,
                      "FERRY_SIM_REFUSE=\"%.64s\": want up to %d op:N, op one of host_alloc, host_func, "
                      "write_flag, mark, mark_unsupported and N >= 1 (its Nth call is refused), comma-separated",
                      s, SIM_MAX_FAULTS);
}

/* FERRY_SIM_HOLD_COPY="N:path" into sim_hw.hold_job / hold_path. */
static int read_hold(void)
{
    const char *s = getenv("FERRY_SIM_HOLD_COPY");
    sim_hw.hold_job = 0;
    if (s == NULL || *s == '\0')
        return 0;
    char *end;
    errno = 0;
    unsigned long long job = *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
    if (job == 0 || errno != 0 || *end != ':' || end[1] == '\0' || strlen(end + 1) >= sizeof sim_hw.hold_path)
        return ferry_fail(FERRY_EINVAL, "FERRY_SIM_HOLD_COPY=\"%.64s\": want N:path (copy job N >= 1 waits until "
                          "the file path exists; a path under %zu bytes)", s, sizeof sim_hw.hold_path);
    snprintf(sim_hw.hold_path, sizeof sim_hw.hold_path, "%s", end + 1);
    sim_hw.hold_job = job;
    return 0;
}

/* FERRY_SIM_SYNC_TIMEOUT_MS="N" into sim_hw.sync_timeout_ms. */
static int read_sync_timeout(void)
{
    const char *s = getenv("FERRY_SIM_SYNC_TIMEOUT_MS");
    sim_hw.sync_timeout_ms = 0;
    if (s == NULL || *s == '\0')
        return 0;
    char *end;
    errno = 0;
    unsigned long long ms = *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
    if (*s < '0' || *s > '9' || errno != 0 || *end != '\0' || ms > 600000)
        return ferry_fail(FERRY_EINVAL, "FERRY_SIM_SYNC_TIMEOUT_MS=\"%.32s\": want 0..600000 (milliseconds; 0: "
                          "no bound)", s);
    sim_hw.sync_timeout_ms = (unsigned)ms;
    return 0;
}

/* FERRY_SIM_H2D_DELAY_US="N" into sim_hw.h2d_delay_us. */
static int read_h2d_delay(void)
{
    const char *s = getenv("FERRY_SIM_H2D_DELAY_US");
    sim_hw.h2d_delay_us = 0;
    if (s == NULL || *s == '\0')
        return 0;
    char *end;
    errno = 0;
    unsigned long long us = *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
    if (*s < '0' || *s > '9' || errno != 0 || *end != '\0' || us > 1000000)
        return ferry_fail(FERRY_EINVAL, "FERRY_SIM_H2D_DELAY_US=\"%.32s\": want 0..1000000 (microseconds each "
                          "host-to-device copy job takes before its bytes land; 0: none)", s);
    sim_hw.h2d_delay_us = (unsigned)us;
    return 0;
}

int sim_read_config(int *ndev, size_t *dev_size, int *size_given)
{
    const char *s = getenv("FERRY_SIM_DEVICES");
    *ndev = SIM_DEFAULT_DEVICES;
    if (s != NULL && *s != '\0') {
        char *end;
        long v = strtol(s, &end, 10);
        if (*end != '\0' || end == s || v < 1 || v > SIM_MAX_DEVICES)
            return ferry_fail(FERRY_EINVAL, "FERRY_SIM_DEVICES=\"%.32s\": want 1..%d", s,
                              SIM_MAX_DEVICES);
        *ndev = (int)v;
    }
    s = getenv("FERRY_SIM_DEVICE_MEM");
    *dev_size = SIM_DEFAULT_DEVICE_MEM;
    *size_given = 0;
    if (s != NULL && *s != '\0') {
        if (parse_size(s, dev_size) < 0 || *dev_size < SIM_MIN_DEVICE_MEM ||
            *dev_size > ((size_t)1 << 40))
            return ferry_fail(FERRY_EINVAL,
                              "FERRY_SIM_DEVICE_MEM=\"%.32s\": want a size 1M..1024G "
                              "(suffix K, M or G)",
                              s);
        *dev_size = (*dev_size + SIM_PAGE - 1) & ~(SIM_PAGE - 1);
        *size_given = 1;
    }
    int rc = read_faults();
    if (!rc)
        rc = read_hold();
    if (!rc)
        rc = read_refusals();
    if (!rc)
        rc = read_sync_timeout();
    if (!rc)
        rc = read_h2d_delay();
    s = getenv("FERRY_SIM_STALL_ON_WAIT");
    sim_hw.stall_on_wait = s && strcmp(s, "1") == 0;
    if (!rc && s && *s && strcmp(s, "0") != 0 && strcmp(s, "1") != 0)
        rc = ferry_fail(FERRY_EINVAL, "FERRY_SIM_STALL_ON_WAIT=\"%.32s\": want 0 or 1", s);
    return rc;
}

