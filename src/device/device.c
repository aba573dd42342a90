/* SPDX-License-Identifier: Apache-2.0 */
/*
 * device.c — the registry of device backends and what they share.
 *
 * Holds the registry {cpu, cuda, npu, sim}, finds a backend by kind, asks
 * the initialised ones who owns a pointer, and parses location strings from
 * the location kinds the tables declare.  It also
 * implements backend.h: the load-once latch and the dlopen symbol resolver
 * that every backend uses.  No threads of its own; every function is
 * thread-safe.  Owns nothing but the read-only table.
 */
#include "device/device.h"
#include "device/backend.h"

#include <dlfcn.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "log.h"

/* The registry: one line per device kind.  Location strings, lookups by
 * kind and --help-env derive from these tables. */
static const struct ferry_device_ops *const backends[] = {
    &ferry_device_cpu,
    &ferry_device_cuda,
    &ferry_device_npu,
    &ferry_device_sim,
};

#define BACKEND_COUNT (sizeof backends / sizeof backends[0])

const struct ferry_device_ops *const *ferry_device_list(size_t *count)
{
    *count = BACKEND_COUNT;
    return backends;
}

void ferry_device_process_exiting(void)
{
    for (size_t i = 0; i < BACKEND_COUNT; i++)
        if (backends[i]->process_exiting)
            backends[i]->process_exiting();
}

const struct ferry_device_ops *ferry_device_find(const char *kind)
{
    if (kind == NULL)
        return NULL;
    for (size_t i = 0; i < BACKEND_COUNT; i++)
        if (strcmp(backends[i]->kind, kind) == 0)
            return backends[i];
    return NULL;
}

const struct ferry_device_ops *ferry_device_locate(const void *ptr, size_t len, int *dev)
{
    int found_dev = -1;
    if (ptr == NULL)
        return NULL;
    /* Each backend's locate() answers 0 until its init() has succeeded, so
     * this never loads a driver. */
    for (size_t i = 0; i < BACKEND_COUNT; i++) {
        if (backends[i]->locate(ptr, len, &found_dev)) {
            if (dev != NULL)
                *dev = found_dev;
            return backends[i];
        }
    }
    return NULL;
}

const struct ferry_device_ops *ferry_device_detect(const void *ptr, size_t len, int *dev)
{
    for (size_t i = 0; ptr != NULL && i < BACKEND_COUNT; i++) {
        const char *name = backends[i]->driver_library ? backends[i]->driver_library() : NULL;
        if (name == NULL || *name == '\0')
            continue;
        void *h = dlopen(name, RTLD_NOW | RTLD_NOLOAD); /* loaded already? (a reference, dropped below) */
        if (h == NULL)
            continue;
        dlclose(h);
        /* a failure is remembered by the backend and its pointers stay
         * unknown; it is not this call's error (the range may be host memory) */
        if (backends[i]->init() != 0)
            ferry_clear_error();
    }
    return ferry_device_locate(ptr, len, dev);
}

int ferry_device_check_location(const struct ferry_device_ops *ops, const void *ptr, size_t len, int dev)
{
    int found = -1;
    if (ops->check_location)
        return ops->check_location(ptr, len, dev);
    if (ops->locate(ptr, len, &found) && found == dev)
        return 0;
    const struct ferry_device_ops *owner = ferry_device_locate(ptr, len, &found);
    if (owner)
        return ferry_fail(FERRY_EINVAL, "0x%llx+%zu is not %s:%d memory (it belongs to %s:%d)",
                          (unsigned long long)(uintptr_t)ptr, len, ops->kind, dev, owner->kind, found);
    return ferry_fail(FERRY_EINVAL, "0x%llx+%zu is not %s:%d memory (it is host memory)",
                      (unsigned long long)(uintptr_t)ptr, len, ops->kind, dev);
}

/* Parses a decimal index 0..65535 that makes up the whole of s. */
static int parse_index(const char *s, int *out)
{
    long v = 0;
    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
        if (v > 65535)
            return -1;
    }
    *out = (int)v;
    return 0;
}

/* The location kinds of a table: its own list, or kind:N. */
static struct ferry_location_kind location_kind(const struct ferry_device_ops *ops, size_t i, int *more)
{
    struct ferry_location_kind only = {ops->kind, 1, 0};
    if (ops->locations) {
        *more = ops->locations[i].prefix != NULL;
        return ops->locations[i];
    }
    *more = i == 0;
    return only;
}

/* "cpu, cpu:N, cuda, cuda:N, npu:N, sim:N", from the registry. */
static void location_forms(char *out, size_t cap)
{
    size_t used = 0;
    *out = '\0';
    for (size_t b = 0; b < BACKEND_COUNT; b++) {
        int more;
        for (size_t i = 0;; i++) {
            struct ferry_location_kind k = location_kind(backends[b], i, &more);
            if (!more)
                break;
            int n = k.index_required ? snprintf(out + used, cap - used, "%s%s:N", used ? ", " : "", k.prefix)
                                     : snprintf(out + used, cap - used, "%s%s, %s:N", used ? ", " : "", k.prefix,
                                                k.prefix);
            if (n < 0 || (size_t)n >= cap - used)
                return;
            used += (size_t)n;
        }
    }
}

int ferry_location_resolve(const char *loc, const struct ferry_device_ops **ops, int *index)
{
    if (loc == NULL)
        return ferry_fail(FERRY_EINVAL, "location is NULL");
    for (size_t b = 0; b < BACKEND_COUNT; b++) {
        int more;
        for (size_t i = 0;; i++) {
            struct ferry_location_kind k = location_kind(backends[b], i, &more);
            if (!more)
                break;
            size_t klen = strlen(k.prefix);
            int idx;
            if (strncmp(loc, k.prefix, klen) != 0)
                continue;
            if (loc[klen] == '\0') {
                if (k.index_required)
                    return ferry_fail(FERRY_EINVAL, "location \"%s\": needs a device index (\"%s:0\")", loc,
                                      k.prefix);
                idx = k.bare_index;
            } else if (loc[klen] == ':') {
                if (parse_index(loc + klen + 1, &idx) < 0)
                    return ferry_fail(FERRY_EINVAL,
                                      "location \"%.64s\": index after ':' must be a decimal number 0..65535", loc);
            } else {
                continue;
            }
            if (ops != NULL)
                *ops = backends[b];
            if (index != NULL)
                *index = idx;
            return 0;
        }
    }
    char forms[160];
    location_forms(forms, sizeof forms);
    return ferry_fail(FERRY_EINVAL, "location \"%.64s\" is not one of %s", loc, forms);
}

int ferry_location_parse(const char *loc, char kind[16], int *index)
{
    const struct ferry_device_ops *ops;
    int rc = ferry_location_resolve(loc, &ops, index);
    if (rc == 0 && kind != NULL)
        snprintf(kind, 16, "%s", ops->kind);
    return rc;
}

const struct ferry_device_ops *ferry_device_of_location(const char *loc, int *index)
{
    const struct ferry_device_ops *ops;
    int i;
    if (!loc || ferry_location_resolve(loc, &ops, &i) != 0 || (ops->caps & FERRY_DEVICE_HOST))
        return NULL;
    if (index)
        *index = i;
    return ops;
}

/* ---------------------------------------------------------------- backend.h */

int ferry_device_load_once(struct ferry_device_loader *loader, int (*load)(void))
{
    int state = atomic_load_explicit(&loader->state, memory_order_acquire);
    if (state == 0) {
        pthread_mutex_lock(&loader->lock);
        state = atomic_load_explicit(&loader->state, memory_order_relaxed);
        if (state == 0) {
            int rc = load();
            if (rc < 0)
                snprintf(loader->message, sizeof loader->message, "%s", ferry_last_error());
            state = rc < 0 ? rc : 1;
            atomic_store_explicit(&loader->state, state, memory_order_release);
        }
        pthread_mutex_unlock(&loader->lock);
    }
    if (state == 1)
        return 0;
    /* message is written once, before state is published, and never again. */
    return ferry_fail(state, "%s", loader->message);
}

int ferry_device_loaded(struct ferry_device_loader *loader)
{
    return atomic_load_explicit(&loader->state, memory_order_acquire) == 1;
}

int ferry_device_dlopen(const char *libname, const struct ferry_device_sym *syms, size_t n,
                        void **handle)
{
    void *lib = dlopen(libname, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *why = dlerror();
        return ferry_fail(FERRY_ENODEV, "cannot load %s: %s", libname, why ? why : "unknown");
    }
    for (size_t i = 0; i < n; i++) {
        void *fn = dlsym(lib, syms[i].name);
        if (fn == NULL && syms[i].required) {
            dlclose(lib);
            return ferry_fail(FERRY_ENODEV, "%s lacks %s (driver too old?)", libname,
                              syms[i].name);
        }
        /* slot is a function-pointer variable; POSIX guarantees dlsym's
         * object pointer converts to it, memcpy avoids the cast's warning. */
        memcpy(syms[i].slot, &fn, sizeof fn);
    }
    *handle = lib;
    return 0;
}

static int enqueue_each(const struct ferry_copy_engine *e, void *arg,
                        const struct ferry_copy *copies, size_t first, size_t n)
{
    for (size_t i = first; i < first + n; i++) {
        if (copies[i].len == 0)
            continue;
        int rc = e->single(arg, &copies[i], i);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int ferry_device_enqueue_copies(const struct ferry_copy_engine *e, void *arg,
                                const struct ferry_copy *copies, size_t n)
{
    size_t chunk = e->batch_max > 1 ? e->batch_max : 1;
    int rc = 0;
    for (size_t done = 0; done < n && rc == 0; ) {
        size_t k = n - done < chunk ? n - done : chunk;
        int batch = k > 1 && e->batch_enabled != NULL &&
                    atomic_load_explicit(e->batch_enabled, memory_order_relaxed);
        int r = batch ? e->batch(arg, copies + done, k) : -1;
        if (r != 0) {
            rc = enqueue_each(e, arg, copies, done, k);
            if (batch && rc == 0 && atomic_exchange(e->batch_enabled, 0))
                LOG_WARN("%s: batched copy failed (%s, error %d) where single copies work; "
                         "using single copies from now on",
                         e->name, e->error_text(r), r);
        }
        done += k;
    }
    return rc;
}

/* ---------------------------------------------------------------- completion flags */

void ferry_flag_set(volatile uint32_t *flag, uint32_t value)
{
    __atomic_store_n(flag, value, __ATOMIC_RELEASE);
    syscall(SYS_futex, flag, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0); /* shared: the page may be mapped twice */
}

void ferry_flag_wait(volatile uint32_t *flag, uint32_t value)
{
    for (;;) {
        uint32_t now = __atomic_load_n(flag, __ATOMIC_ACQUIRE);
        if ((int32_t)(now - value) >= 0)
            return;
        syscall(SYS_futex, flag, FUTEX_WAIT, now, NULL, NULL, 0); /* returns at once if *flag != now */
    }
}
