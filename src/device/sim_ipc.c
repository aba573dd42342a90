/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sim_ipc.c — the sim device's memory shared with other processes, like
 * CUDA IPC: exporting an allocation moves its shadow bytes into a memfd
 * mapped shared at the same place; another process opens the handle through
 * /proc/<pid>/fd/<n> and maps that memfd over a fresh allocation of its own
 * sim device.  No threads; state is sim.c's (sim_internal.h).
 *
 * As with CUDA, an opening keeps the bytes alive after the exporter frees
 * the allocation, and copies through it still run — into memory the
 * exporter no longer sees.  The memfd's last page (a tag) says the exporter
 * freed it, so such copies are counted (sim_ipc_counts, for tests) and
 * logged, as are opens and closes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device/sim_internal.h"
#include "err.h"
#include "log.h"

#define SIM_IPC_MAGIC 0x43504953u /* "SIPC" */
struct sim_ipc_handle {
    uint32_t magic;
    int32_t pid;                 /* the exporter */
    int32_t fd;                  /* its memfd, opened through /proc/<pid>/fd/<fd> */
    uint32_t pad;
    uint64_t ino;                /* the memfd's inode: a reused fd number is caught */
    uint64_t span;               /* the allocation's size in pages */
    uint64_t offset;             /* ptr - allocation start */
};
_Static_assert(sizeof(struct sim_ipc_handle) <= FERRY_IPC_HANDLE_MAX, "fits FERRY_IPC_HANDLE_MAX");

/* The page after an exported allocation's bytes in its memfd. */
struct sim_ipc_tag {
    _Atomic uint32_t freed;      /* the exporter freed the allocation */
};

static atomic_uint_fast64_t ipc_opens, ipc_closes, stale_copies;

void sim_ipc_counts(struct sim_ipc_counts *out)
{
    out->opens = atomic_load(&ipc_opens);
    out->closes = atomic_load(&ipc_closes);
    out->stale_copies = atomic_load(&stale_copies);
}

/* The tag page of memfd fd holding span bytes, mapped; NULL on failure. */
static struct sim_ipc_tag *tag_map(int fd, size_t span)
{
    void *m = mmap(NULL, SIM_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)span);
    return m == MAP_FAILED ? NULL : m;
}

void sim_ipc_release(struct sim_alloc *a)
{
    if (!a->tag)
        return;
    if (!a->imported)
        atomic_store(&a->tag->freed, 1);
    munmap(a->tag, SIM_PAGE);
    a->tag = NULL;
}

void sim_ipc_check_access(const struct sim_alloc *a, int dev, const void *p, size_t len)
{
    if (!a->imported || !a->tag || !atomic_load(&a->tag->freed))
        return;
    atomic_fetch_add(&stale_copies, 1);
    LOG_ERROR("sim:%d: a copy through %p+%zu, an opening of another process's allocation that its exporter has "
              "freed: the bytes go where the exporter no longer sees them", dev, p, len);
}

/* Index of the live allocation of dev holding [p, p+len), or -1.  Caller
 * holds the device's lock. */
static long alloc_holding(int dev, const void *p, size_t len)
{
    const struct sim_device *d = &sim_hw.devs[dev];
    size_t off = (size_t)((const char *)p - sim_hw.base) - (size_t)dev * sim_hw.dev_size;
    long i = sim_last_at_or_before(d, off);
    if (i < 0 || off - d->allocs[i].off > d->allocs[i].len || len > d->allocs[i].len - (off - d->allocs[i].off))
        return -1;
    return i;
}

/* Moves an allocation's bytes into a memfd mapped shared in their place. */
static int share_alloc(int dev, struct sim_alloc *a)
{
    char *sh = sim_shadow_of(sim_hw.base + (size_t)dev * sim_hw.dev_size + a->off);
    int fd = memfd_create("ferry-sim-ipc", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)(a->span + SIM_PAGE)) != 0 || pwrite(fd, sh, a->span, 0) != (ssize_t)a->span ||
        (a->tag = tag_map(fd, a->span)) == NULL ||
        mmap(sh, a->span, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
        int err = errno;
        if (a->tag)
            munmap(a->tag, SIM_PAGE);
        a->tag = NULL;
        if (fd >= 0)
            close(fd);
        return ferry_fail(FERRY_EIO, "sim:%d: cannot share an allocation of %zu bytes: %s", dev, a->span,
                          strerror(err));
    }
    a->fd = fd;
    return 0;
}

int sim_ipc_export(const void *ptr, size_t len, void *handle, size_t *handle_len)
{
    int dev = ferry_device_loaded(&sim_hw.loader) ? sim_device_of(ptr) : -1;
    if (dev < 0)
        return ferry_fail(FERRY_EINVAL, "sim: ipc_export(%p): not sim device memory", ptr);
    if (*handle_len < sizeof(struct sim_ipc_handle))
        return ferry_fail(FERRY_EINVAL, "sim: ipc_export: %zu bytes of room, %zu needed", *handle_len,
                          sizeof(struct sim_ipc_handle));
    struct sim_device *d = &sim_hw.devs[dev];
    pthread_mutex_lock(&d->lock);
    long i = alloc_holding(dev, ptr, len);
    int rc = i < 0 ? ferry_fail(FERRY_EINVAL, "sim:%d: ipc_export(%p+%zu): not inside a live allocation", dev,
                                ptr, len)
             : d->allocs[i].imported ? ferry_fail(FERRY_ENOTSUP, "sim:%d: ipc_export(%p): memory opened from "
                                                  "another process cannot be exported again", dev, ptr)
                                     : 0;
    struct stat st;
    if (!rc && d->allocs[i].fd < 0)
        rc = share_alloc(dev, &d->allocs[i]);
    if (!rc && fstat(d->allocs[i].fd, &st) != 0)
        rc = ferry_fail(FERRY_EIO, "sim:%d: fstat of a shared allocation: %s", dev, strerror(errno));
    if (!rc) {
        size_t off = (size_t)((const char *)ptr - sim_hw.base) - (size_t)dev * sim_hw.dev_size;
        struct sim_ipc_handle h = {SIM_IPC_MAGIC, (int32_t)getpid(), d->allocs[i].fd, 0, (uint64_t)st.st_ino,
                                   d->allocs[i].span, off - d->allocs[i].off};
        memcpy(handle, &h, sizeof h);
        *handle_len = sizeof h;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

/* Opens the exporter's memfd named by h, checking it is still that memfd. */
static int open_exported(const struct sim_ipc_handle *h)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)h->pid, (int)h->fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return ferry_fail(errno == ENOENT ? FERRY_EINVAL : FERRY_EIO, "sim: ipc_open: %s: %s", path,
                          strerror(errno));
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_ino != h->ino || (uint64_t)st.st_size != h->span + SIM_PAGE) {
        close(fd);
        return ferry_fail(FERRY_EINVAL, "sim: ipc_open: %s is no longer the exported allocation", path);
    }
    return fd;
}

int sim_ipc_open(int dev, const void *handle, size_t handle_len, void **ptr, size_t *room)
{
    struct sim_ipc_handle h;
    int rc = sim_init();
    if (rc < 0 || (rc = sim_check_dev(dev)) < 0)
        return rc;
    if (handle_len != sizeof h)
        return ferry_fail(FERRY_EINVAL, "sim: ipc_open: a handle of %zu bytes, expected %zu", handle_len,
                          sizeof h);
    memcpy(&h, handle, sizeof h);
    if (h.magic != SIM_IPC_MAGIC || h.span == 0 || h.span % SIM_PAGE || h.offset >= h.span)
        return ferry_fail(FERRY_EINVAL, "sim: ipc_open: not a sim IPC handle");
    if (h.pid == (int32_t)getpid())
        return ferry_fail(FERRY_ENOTSUP, "sim: ipc_open: the handle was exported by this process");
    int fd = open_exported(&h);
    if (fd < 0)
        return fd;
    void *p = NULL;
    if ((rc = sim_mem_alloc(dev, (size_t)h.span, &p)) < 0) {
        close(fd);
        return rc;
    }
    struct sim_device *d = &sim_hw.devs[dev];
    pthread_mutex_lock(&d->lock);
    long i = alloc_holding(dev, p, (size_t)h.span);
    d->allocs[i].imported = 1;   /* also on failure: release remaps the range private */
    if (mmap(sim_shadow_of(p), (size_t)h.span, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
        (d->allocs[i].tag = tag_map(fd, (size_t)h.span)) == NULL)
        rc = ferry_fail(FERRY_EIO, "sim:%d: ipc_open: mmap: %s", dev, strerror(errno));
    if (rc)
        sim_release_locked(d, (size_t)i);
    pthread_mutex_unlock(&d->lock);
    close(fd);
    if (rc)
        return rc;
    atomic_fetch_add(&ipc_opens, 1);
    *ptr = (char *)p + h.offset;
    *room = (size_t)(h.span - h.offset);
    return 0;
}

void sim_ipc_close(int dev, void *ptr)
{
    if (!ferry_device_loaded(&sim_hw.loader) || dev < 0 || dev >= sim_hw.ndev || sim_device_of(ptr) != dev)
        return;
    struct sim_device *d = &sim_hw.devs[dev];
    pthread_mutex_lock(&d->lock);
    long i = alloc_holding(dev, ptr, 0);
    if (i >= 0 && d->allocs[i].imported) {
        sim_release_locked(d, (size_t)i);
        atomic_fetch_add(&ipc_closes, 1);
    } else
        LOG_ERROR("sim: ipc_close(sim:%d, %p): not memory ipc_open returned", dev, ptr);
    pthread_mutex_unlock(&d->lock);
}
