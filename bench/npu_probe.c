/* SPDX-License-Identifier: Apache-2.0 */
/*
 * npu_probe.c — asks the ACL runtime what it really does where CANN
 * versions differ, through the entry points ferry's npu backend loaded
 * (FERRY_ASCEND_LIBRARY or libascendcl.so), bypassing ferry's own guards:
 *   - H2D / D2H with pageable (malloc) host memory: error, or data?
 *   - aclrtMemcpyAsync at addresses not 64-byte aligned: error, or data?
 *   - aclrtMemcpyBatchAsync: absent, "not supported", or working?
 *   - aclrtPointerGetAttributes: absent, or what it says of device, pinned
 *     and malloc'd pointers?
 * One line per probe; the hardware checklist (tests/npu/run.sh) prints them
 * and CI runs it on the fake runtime.  Exit 0 unless the device cannot be
 * used at all (77 without an NPU).
 *
 *   npu_probe [device index, default 0]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/ascend.h"
#include "device/device.h"
#include "err.h"

#define LEN (1u << 20)

static aclrtStream stream;

/* One copy through ACL directly, waited for: the ACL code, or -1 if the
 * data arrived wrong. */
static int raw_copy(void *dst, const void *src, size_t len, int kind)
{
    aclError r = acl.aclrtMemcpyAsync(dst, len, src, len, kind, stream);
    if (r != ACL_SUCCESS)
        return r;
    return acl.aclrtSynchronizeStream(stream);
}

static void fill(unsigned char *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(i * 31 + seed);
}

static const char *verdict(int r, const unsigned char *got, const unsigned char *want, size_t len, char *buf)
{
    if (r != ACL_SUCCESS)
        snprintf(buf, 96, "rejected: ACL error %d (%s)", r, npu_error_text(r));
    else if (memcmp(got, want, len) != 0)
        snprintf(buf, 96, "NO ERROR BUT WRONG DATA");
    else
        snprintf(buf, 96, "works");
    return buf;
}

int main(int argc, char **argv)
{
    int dev = argc > 1 ? atoi(argv[1]) : 0;
    const struct ferry_device_ops *ops = ferry_device_find("npu");
    void *d, *pinned, *p2;
    char v[96];
    if (!ops || ops->init() != 0 || dev >= ops->device_count()) {
        printf("SKIPPED: no npu:%d: %s\n", dev, ferry_last_error());
        return 77;
    }
    if (ops->mem_alloc(dev, LEN, &d) || ops->host_alloc(LEN, &pinned) || ops->host_alloc(LEN, &p2) ||
        acl.aclrtSetDevice(dev) != ACL_SUCCESS || acl.aclrtCreateStream(&stream) != ACL_SUCCESS) {
        printf("FAIL: setup: %s\n", ferry_last_error());
        return 1;
    }
    /* pageable but 64-byte aligned, so only the pinning differs */
    unsigned char *pageable = aligned_alloc(4096, LEN), *back = aligned_alloc(4096, LEN);

    /* pageable host memory, both directions */
    fill(pageable, LEN, 1);
    int r = raw_copy(d, pageable, LEN, ACL_MEMCPY_HOST_TO_DEVICE);
    memset(p2, 0, LEN);
    if (r == ACL_SUCCESS)
        r = raw_copy(p2, d, LEN, ACL_MEMCPY_DEVICE_TO_HOST);
    printf("pageable H2D: %s\n", verdict(r, p2, pageable, LEN, v));
    fill(pinned, LEN, 2);
    r = raw_copy(d, pinned, LEN, ACL_MEMCPY_HOST_TO_DEVICE);
    memset(back, 0, LEN);
    if (r == ACL_SUCCESS)
        r = raw_copy(back, d, LEN, ACL_MEMCPY_DEVICE_TO_HOST);
    printf("pageable D2H: %s\n", verdict(r, back, pinned, LEN, v));

    /* 64-byte alignment: host side off by 8, then device side off by 8 */
    fill(pinned, LEN, 3);
    memset(p2, 0, LEN);
    r = raw_copy(d, (char *)pinned + 8, 4096, ACL_MEMCPY_HOST_TO_DEVICE);
    if (r == ACL_SUCCESS)
        r = raw_copy(p2, d, 4096, ACL_MEMCPY_DEVICE_TO_HOST);
    printf("H2D from host address +8: %s\n", verdict(r, p2, (unsigned char *)pinned + 8, 4096, v));
    r = raw_copy((char *)d + 8, pinned, 4096, ACL_MEMCPY_HOST_TO_DEVICE);
    memset(p2, 0, LEN);
    if (r == ACL_SUCCESS)
        r = raw_copy(p2, (char *)d + 8, 4096, ACL_MEMCPY_DEVICE_TO_HOST);
    printf("H2D / D2H at device address +8: %s\n", verdict(r, p2, pinned, 4096, v));

    /* the batch call */
    if (!acl.aclrtMemcpyBatchAsync) {
        printf("aclrtMemcpyBatchAsync: absent\n");
    } else {
        void *dsts[2] = {p2, (char *)p2 + 4096}, *srcs[2] = {d, (char *)d + 8192};
        size_t sizes[2] = {4096, 4096}, idx = 0, fail = SIZE_MAX;
        struct acl_memcpy_batch_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.src_loc = (struct acl_mem_location){(uint32_t)dev, ACL_MEM_LOCATION_TYPE_DEVICE};
        attr.dst_loc = (struct acl_mem_location){0, ACL_MEM_LOCATION_TYPE_HOST};
        fill(pinned, LEN, 4);
        r = raw_copy(d, pinned, LEN, ACL_MEMCPY_HOST_TO_DEVICE);
        memset(p2, 0, LEN);
        if (r == ACL_SUCCESS)
            r = acl.aclrtMemcpyBatchAsync(dsts, sizes, srcs, sizes, 2, &attr, &idx, 1, &fail, stream);
        if (r == ACL_SUCCESS)
            r = acl.aclrtSynchronizeStream(stream);
        int ok = r == ACL_SUCCESS && !memcmp(p2, pinned, 4096) && !memcmp((char *)p2 + 4096, (char *)pinned + 8192, 4096);
        printf("aclrtMemcpyBatchAsync: %s\n", r != ACL_SUCCESS ? verdict(r, NULL, NULL, 0, v) : ok ? "works" : "NO ERROR BUT WRONG DATA");
    }

    /* pointer attributes */
    if (!acl.aclrtPointerGetAttributes) {
        printf("aclrtPointerGetAttributes: absent\n");
    } else {
        const void *ptrs[3] = {d, pinned, pageable};
        const char *names[3] = {"aclrtMalloc", "aclrtMallocHost", "malloc"};
        for (int i = 0; i < 3; i++) {
            union acl_ptr_attributes a;
            memset(&a, 0, sizeof a);
            r = acl.aclrtPointerGetAttributes(ptrs[i], &a);
            if (r != ACL_SUCCESS)
                printf("aclrtPointerGetAttributes(%s): ACL error %d\n", names[i], r);
            else
                printf("aclrtPointerGetAttributes(%s): type %d (%s) id %u\n", names[i], a.a.location.type,
                       a.a.location.type == ACL_MEM_LOCATION_TYPE_DEVICE ? "device" : "host", a.a.location.id);
        }
    }
    (void)acl.aclrtDestroyStream(stream);
    ops->mem_free(dev, d);
    ops->host_free(pinned);
    ops->host_free(p2);
    free(pageable);
    free(back);
    return 0;
}
