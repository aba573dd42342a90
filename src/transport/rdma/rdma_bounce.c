/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_bounce.c — the target's half of target-side staging (the initiator's
 * half is rdma_stage.c): each responder queue pair gets a pinned bounce of
 * FERRY_RDMA_STAGE_SLOTS slots, registered for remote write and read on the
 * queue pair's NIC and announced in HELLO_ACK.  A STAGE_WRITE says which
 * bytes of a slot landed for which addresses: they are copied host->device
 * and only then acknowledged.  A STAGE_READ asks for addresses: they are
 * copied device->host into the slot and acknowledged, and the initiator then
 * reads the slot by RDMA.
 *
 * Threads: runs on the side-channel connection's thread (rdma_server.c),
 * one message at a time; device copies use that thread's stream
 * (ferry_device_copy_sync).  Every run is checked against this engine's
 * remote-accessible registrations and copied under a memreg access, so
 * ferry_unregister_memory waits for a copy in progress and refuses the next.
 * The bounce belongs to its connection; the queue pair is destroyed first.
 */
#ifdef FERRY_HAVE_RDMA
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "device/device.h"
#include "err.h"
#include "log.h"
#include "transport/rdma/rdma.h"

/* The device kind of the first remote-accessible device registration: its
 * pinned host memory makes the bounce copies fastest (NULL: none yet). */
static const struct ferry_device_ops *bounce_owner(struct rdma_transport *t)
{
    struct memreg_region r[16];
    size_t n = memreg_list_remote(t->host.registry, r, 16);
    for (size_t i = 0; i < n && i < 16; i++)
        if (r[i].device_index >= 0)
            return ferry_device_of_location(r[i].location, NULL);
    return NULL;
}

int rdma_bounce_create(struct rdma_transport *t, struct rdma_nic *nic, struct rdma_bounce *b)
{
    memset(b, 0, sizeof *b);
    if (!t->knobs.stage_slots)
        return 0;
    b->len = (size_t)t->knobs.stage_slots * t->knobs.stage_slot_size;
    b->owner = bounce_owner(t);
    int rc = 0;
    if (b->owner)
        rc = b->owner->host_alloc(b->len, &b->buf);
    else if (posix_memalign(&b->buf, 4096, b->len) != 0)
        rc = ferry_fail(FERRY_ENOMEM, "rdma: bounce of %zu bytes", b->len);
    if (rc) {
        b->buf = NULL;
        return rc;
    }
    /* The initiator may RDMA READ any byte of its bounce at any time: it must
     * not find what this process left in the memory before (another peer's
     * staged data from a freed bounce, pinned pool reuse, heap contents). */
    memset(b->buf, 0, b->len);
    b->mr = ibv_reg_mr(nic->pd, b->buf, b->len,
                       IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
    if (!b->mr) {
        rc = ferry_fail(FERRY_EIO, "rdma: ibv_reg_mr of a %zu-byte bounce on %s: %s", b->len, nic->name,
                        strerror(errno));
        rdma_bounce_destroy(b);
        return rc;
    }
    b->info = (struct rdma_bounce_info){(uint64_t)(uintptr_t)b->buf, b->mr->rkey, t->knobs.stage_slots,
                                        t->knobs.stage_slot_size};
    return 0;
}

void rdma_bounce_destroy(struct rdma_bounce *b)
{
    if (b->mr)
        ibv_dereg_mr(b->mr);
    if (b->buf && b->owner)
        b->owner->host_free(b->buf);
    else
        free(b->buf);
    memset(b, 0, sizeof *b);
}

static int send_ack(int fd, uint64_t id, int status, uint64_t refused, const char *why)
{
    uint8_t raw[8];
    put_le64(raw, refused);
    size_t n = strlen(why) < RDMA_MAX_TEXT ? strlen(why) : RDMA_MAX_TEXT;
    /* a device copy may fail with any code; the initiator takes only those of rdma_status_allowed */
    struct rdma_msg_header h = {.type = RDMA_MSG_STAGE_ACK,
                                .status = rdma_status_allowed(RDMA_MSG_STAGE_ACK, status) ? status : FERRY_EIO,
                                .id = id};
    return rdma_msg_send(fd, &h, raw, sizeof raw, why, n);
}

/* Copies the held runs between the slot and their memory: host memory with
 * memcpy, device memory one batched copy per run of the same device.
 * 0 or the first copy's error (why says which). */
static int copy_runs(struct rdma_bounce *b, bool write, char *slot, const struct rdma_stage_entry *e,
                     const struct memreg_region *r, uint64_t held, uint32_t n, char *why, size_t cap)
{
    for (uint32_t i = 0; i < n;) {
        if (!(held >> i & 1)) {
            i++;
            continue;
        }
        void *mem = (void *)(uintptr_t)e[i].addr;
        if (r[i].device_index < 0) {
            if (write)
                memcpy(mem, slot + e[i].off, e[i].len);
            else
                memcpy(slot + e[i].off, mem, e[i].len);
            i++;
            continue;
        }
        int dev;
        const struct ferry_device_ops *ops = ferry_device_of_location(r[i].location, &dev);
        if (!ops) {
            snprintf(why, cap, "no device backend for %s", r[i].location);
            return FERRY_ENODEV;
        }
        struct ferry_copy c[RDMA_STAGE_ENTRIES];
        size_t k = 0;
        uint32_t j = i;
        for (; j < n; j++) {
            if (!(held >> j & 1))
                continue;
            if (strcmp(r[j].location, r[i].location) != 0)
                break;
            void *m = (void *)(uintptr_t)e[j].addr;
            c[k++] = write ? (struct ferry_copy){m, slot + e[j].off, e[j].len}
                           : (struct ferry_copy){slot + e[j].off, m, e[j].len};
        }
        int rc = ferry_device_copy_sync(ops, dev, write ? FERRY_COPY_H2D : FERRY_COPY_D2H, c, k);
        if (rc) {
            snprintf(why, cap, "%s copy of %zu run(s) at 0x%llx failed: %.90s", write ? "host->device" : "device->host",
                     k, (unsigned long long)e[i].addr, ferry_last_error());
            return rc;
        }
        i = j;
    }
    (void)b;
    return 0;
}

int rdma_bounce_serve(struct rdma_transport *t, struct rdma_bounce *b, int fd, const struct rdma_msg_header *h,
                      const uint8_t *payload, const char *from)
{
    if (!b->buf)
        return ferry_fail(FERRY_EPROTO, "staging message on a queue pair without a bounce (staging is off here)");
    uint32_t slot, n;
    struct rdma_stage_entry e[RDMA_STAGE_ENTRIES];
    int rc = rdma_stage_decode(payload, h->len, b->info.slots, b->info.slot_size, &slot, e, &n);
    if (rc)
        return rc;
    bool write = h->type == RDMA_MSG_STAGE_WRITE;
    char *base = (char *)b->buf + (size_t)slot * b->info.slot_size;
    struct memreg_region r[RDMA_STAGE_ENTRIES];
    uint64_t refused = 0, held = 0, bytes = 0, bounced = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (memreg_access_begin(t->host.registry, &b->acc[i], e[i].addr, e[i].len, 1, &r[i], NULL, NULL) != 0) {
            refused |= 1ull << i;
            atomic_fetch_add(&t->refused, 1);
            LOG_WARN("rdma: refused staged %s from %s at 0x%llx+%u: outside remote-accessible buffers",
                     write ? "WRITE" : "READ", from, (unsigned long long)e[i].addr, e[i].len);
            continue;
        }
        held |= 1ull << i;
        bytes += e[i].len;
        bounced += r[i].device_index >= 0 ? e[i].len : 0;
    }
    char why[RDMA_MAX_TEXT + 1] = "";
    int status = copy_runs(b, write, base, e, r, held, n, why, sizeof why);
    for (uint32_t i = 0; i < n; i++)
        if (held >> i & 1)
            memreg_access_end(t->host.registry, &b->acc[i]);
    if (status) {
        LOG_WARN("rdma: staged %s from %s failed: %s", write ? "WRITE" : "READ", from, why);
    } else {
        atomic_fetch_add(&t->bytes_served, bytes);
        atomic_fetch_add(t->host.bytes_bounced, bounced);
    }
    return send_ack(fd, h->id, status, refused, why);
}

#endif /* FERRY_HAVE_RDMA */
