/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_test.h — what the rdma tests (test_rdma.c, test_rdma_stage.c) share:
 * an engine with their timeouts, and the start of main that makes the
 * process speak rdma only and skips (exit 77) where no RDMA device works.
 * Header-only (static inline); the main thread calls these before any
 * other thread exists (they set environment variables).
 */
#ifndef FERRY_TEST_RDMA_TEST_H
#define FERRY_TEST_RDMA_TEST_H

#include <stdio.h>
#include <stdlib.h>

#include "ferry.h"
#include "testutil.h"

/* An engine with request_timeout_ms, and connect_timeout_ms unless
 * FERRY_CONNECT_TIMEOUT_MS is set (slow sanitizer runs raise it).  Returns
 * ferry_engine_create's result. */
static inline int rdma_test_engine(unsigned request_timeout_ms, unsigned connect_timeout_ms, ferry_engine **e)
{
    struct ferry_config cfg;
    int rc = ferry_config_init(&cfg);
    if (rc)
        return rc;
    cfg.request_timeout_ms = request_timeout_ms;
    if (!getenv("FERRY_CONNECT_TIMEOUT_MS"))
        cfg.connect_timeout_ms = connect_timeout_ms;
    return ferry_engine_create(&cfg, e);
}

/* FERRY_PROTOCOLS=rdma without the tcp fallback, on FERRY_TEST_RDMA_DEVICE
 * (default "auto") for this process and the targets it starts; skips the
 * whole program where no RDMA device is usable (FERRY_ENODEV, FERRY_EINVAL),
 * fails it (exit 1) on any other error. */
static inline void rdma_test_require_device(void)
{
    setenv("FERRY_PROTOCOLS", "rdma", 1);
    setenv("FERRY_TRANSPORT_FALLBACK", "0", 1); /* no NIC: skip, instead of running on tcp */
    const char *dev = getenv("FERRY_TEST_RDMA_DEVICE");
    setenv("FERRY_DEVICE_NAME", dev ? dev : "auto", 1);
    ferry_engine *probe = NULL;
    int rc = rdma_test_engine(1000, 1000, &probe);
    if (rc == FERRY_ENODEV || rc == FERRY_EINVAL)
        test_skip("no usable RDMA device: %s", ferry_last_error());
    if (rc) { /* a device that is there but fails: the test fails */
        fprintf(stderr, "an rdma engine could not be created: %s: %s\n", ferry_err_name(rc), ferry_last_error());
        exit(1);
    }
    ferry_engine_destroy(probe);
}

#endif
