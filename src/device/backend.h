/* SPDX-License-Identifier: Apache-2.0 */
/*
 * backend.h — helpers shared by the device backends (cuda.c, ascend.c, sim.c).
 *
 * Not for the engine: it calls through struct ferry_device_ops only.  This
 * header holds the two things every backend needs and none should write twice:
 * a load-once latch that remembers why loading failed, and a dlopen that
 * resolves a table of symbols with clear FERRY_ENODEV messages.
 */
#ifndef FERRY_DEVICE_BACKEND_H
#define FERRY_DEVICE_BACKEND_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "device/device.h"

/* A backend's load-once latch.  Initialise with FERRY_DEVICE_LOADER_INIT. */
struct ferry_device_loader {
    pthread_mutex_t lock;
    atomic_int state;            /* 0 not tried, 1 loaded, < 0 the FERRY_E* code it failed with */
    char message[256];           /* the detail message of the failure */
};

#define FERRY_DEVICE_LOADER_INIT {PTHREAD_MUTEX_INITIALIZER, 0, ""}

/* Runs load() once per process (callers racing wait for the first one).
 * Returns 0 when loaded; otherwise the code load() returned, with its detail
 * message re-recorded for the calling thread on every later call too: a
 * failed load is not retried (a missing library does not appear later). */
int ferry_device_load_once(struct ferry_device_loader *loader, int (*load)(void));

/* 1 if the latch has loaded successfully, else 0.  Never loads; lock-free. */
int ferry_device_loaded(struct ferry_device_loader *loader);

/* One symbol of a driver library.  slot points at a function-pointer variable
 * whose type matches the symbol's prototype. */
struct ferry_device_sym {
    const char *name;
    void *slot;
    int required;                /* 0: optional, slot left NULL if missing */
};

/* dlopen(libname) and resolve every symbol into its slot.  Returns 0 and the
 * handle in *handle, or FERRY_ENODEV naming the library (with dlerror()) or
 * the first missing required symbol; nothing stays open on failure. */
int ferry_device_dlopen(const char *libname, const struct ferry_device_sym *syms, size_t n,
                        void **handle);

/* How a backend enqueues copies: batched driver calls where it has one,
 * single calls otherwise.  Shared so every backend falls back the same way. */
struct ferry_copy_engine {
    const char *name;            /* "cuda:0", for the log */
    atomic_int *batch_enabled;   /* NULL or 0: no batch API; cleared when it misbehaves */
    size_t batch_max;            /* copies per batch call (the backend's array size) */
    /* Enqueues k (2..batch_max) copies in one driver call; zero-length copies
     * are the callee's to skip.  Returns 0 or the driver's nonzero error. */
    int (*batch)(void *arg, const struct ferry_copy *copies, size_t k);
    /* Enqueues one copy (len > 0) that is copies-array entry index.  Returns
     * 0, or a FERRY_E* code with the detail message set. */
    int (*single)(void *arg, const struct ferry_copy *copy, size_t index);
    /* Text for a driver error code returned by batch. */
    const char *(*error_text)(int driver_error);
};

/* Enqueues n copies through e.  A chunk whose batch call fails is redone one
 * copy at a time: a bad address is then reported precisely by single(); if
 * every single copy goes through, the batch API is what failed, and batching
 * is switched off for the process with one warning.  (A copy the failed batch
 * did enqueue is then done twice, with the same bytes.)  Returns 0 or the
 * first error of single(). */
int ferry_device_enqueue_copies(const struct ferry_copy_engine *e, void *arg,
                                const struct ferry_copy *copies, size_t n);

#endif /* FERRY_DEVICE_BACKEND_H */
