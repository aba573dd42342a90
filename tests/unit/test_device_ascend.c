/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_device_ascend.c — the hardware device test of test_device_cuda.c, run
 * against Ascend NPUs ("npu"): allocation, batched H2D / D2D / D2H of 128
 * blocks of 64 KiB with the data checked, another thread, locate().  Skips
 * (exit 77) where libascendcl.so or an NPU is missing.
 */
#define DEVICE_KIND "npu"
#define DEVICE_WHAT "Ascend NPU"
#include "test_device_cuda.c"
