/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memory.c — TransferEngine methods for memory: registration (one buffer or a
 * list, all or nothing) and managed buffers over the slab of slab.c.
 *
 * A registered object (bytearray, numpy array, tensor) is kept referenced, its
 * buffer view held, in self->regs until it is unregistered: peers may write
 * into it at any time, so its memory must neither move nor be freed.  Calls
 * that may block (registration publishes the descriptor; the first managed
 * allocation maps and registers the pool) release the GIL.
 */
#include "pyferry.h"

#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- memory */

static void reg_capsule_free(PyObject *cap)
{
    struct local_ref *r = PyCapsule_GetPointer(cap, "ferry.reg");
    if (r) {
        local_ref_release(r);
        PyMem_Free(r);
    }
}

/* Registers one buffer; raises on failure.  Returns 0 or -1.  An object's
 * view (or tensor) is kept in self->regs until it is unregistered: its memory
 * must not move or vanish while peers may write into it. */
static int register_one(EngineObject *self, PyObject *buf, PyObject *length, PyObject *location, int remote)
{
    int err = 0;
    const char *loc = opt_str(location, "location", &err);
    if (err)
        return -1;
    struct local_ref *r = PyMem_Malloc(sizeof *r); /* filled in place: a Py_buffer is not moved */
    if (!r) {
        PyErr_NoMemory();
        return -1;
    }
    size_t len;
    if (local_ref_get(buf, remote, r)) {
        PyMem_Free(r);
        return -1;
    }
    if (resolve_length(length, r, "length", 0, &len))
        goto fail;
    if (loc && strcmp(loc, "*") == 0) /* the reference's wildcard: detect */
        loc = NULL;
    if (!loc && r->location[0])
        loc = r->location;
    int rc;
    char why[512] = "";
    Py_BEGIN_ALLOW_THREADS
    rc = ferry_register_memory(self->engine, (void *)r->addr, len, loc, remote);
    if (rc)
        snprintf(why, sizeof why, "%s", ferry_last_error());
    Py_END_ALLOW_THREADS
    if (rc) {
        raise_ferry(rc, why);
        goto fail;
    }
    if (!r->has_view && !r->keep) {
        PyMem_Free(r);
        return 0;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(r->addr);
    PyObject *cap = key ? PyCapsule_New(r, "ferry.reg", reg_capsule_free) : NULL;
    if (!cap) {
        Py_XDECREF(key);
        goto fail;
    }
    int bad = PyDict_SetItem(self->regs, key, cap);
    Py_DECREF(key);
    Py_DECREF(cap); /* the dict holds it; on failure this releases the view */
    return bad ? -1 : 0;
fail:
    local_ref_release(r);
    PyMem_Free(r);
    return -1;
}

/* Address of an int or of a buffer object / tensor (not kept). */
static int address_of(PyObject *obj, uintptr_t *out)
{
    struct local_ref r;
    if (local_ref_get(obj, 0, &r))
        return -1;
    *out = r.addr;
    local_ref_release(&r);
    return 0;
}

static int unregister_one(EngineObject *self, PyObject *buf)
{
    uintptr_t addr;
    if (address_of(buf, &addr))
        return -1;
    int rc;
    char why[512] = "";
    Py_BEGIN_ALLOW_THREADS
    rc = ferry_unregister_memory(self->engine, (void *)addr);
    if (rc)
        snprintf(why, sizeof why, "%s", ferry_last_error());
    Py_END_ALLOW_THREADS
    if (rc) {
        raise_ferry(rc, why);
        return -1;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(addr);
    if (!key)
        return -1;
    if (PyDict_DelItem(self->regs, key))
        PyErr_Clear(); /* an int address: nothing was held */
    Py_DECREF(key);
    return 0;
}

static PyObject *Engine_register_memory(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"buffer_addr", "capacity", "location", "remote_accessible", NULL};
    PyObject *a[4];
    if (parse_args("register_memory", args, nargs, kw, names, 1, a))
        return NULL;
    int remote = a[3] ? PyObject_IsTrue(a[3]) : 1;
    if (remote < 0 || engine_enter(self))
        return NULL;
    int rc = register_one(self, a[0], a[1], a[2], remote);
    engine_leave(self);
    return rc ? NULL : PyLong_FromLong(0);
}

static PyObject *Engine_unregister_memory(EngineObject *self, PyObject *buf)
{
    if (engine_enter(self))
        return NULL;
    int rc = unregister_one(self, buf);
    engine_leave(self);
    return rc ? NULL : PyLong_FromLong(0);
}

static PyObject *Engine_batch_register_memory(EngineObject *self, PyObject *const *args, Py_ssize_t nargs,
                                              PyObject *kw)
{
    static const char *const names[] = {"buffer_addresses", "capacities", "location", "remote_accessible", NULL};
    PyObject *a[4];
    if (parse_args("batch_register_memory", args, nargs, kw, names, 2, a))
        return NULL;
    int remote = a[3] ? PyObject_IsTrue(a[3]) : 1;
    if (remote < 0)
        return NULL;
    PyObject *bufs = PySequence_Fast(a[0], "buffer_addresses must be a sequence");
    PyObject *lens = bufs ? PySequence_Fast(a[1], "capacities must be a sequence") : NULL;
    if (!lens) {
        Py_XDECREF(bufs);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(bufs), done = 0;
    if (PySequence_Fast_GET_SIZE(lens) != n) {
        PyErr_Format(PyExc_ValueError, "buffer_addresses has %zd items, capacities %zd", n,
                     PySequence_Fast_GET_SIZE(lens));
    } else if (!engine_enter(self)) {
        for (; done < n; done++)
            if (register_one(self, PySequence_Fast_GET_ITEM(bufs, done), PySequence_Fast_GET_ITEM(lens, done), a[2],
                             remote))
                break;
        if (done < n) { /* all or nothing */
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            for (Py_ssize_t i = 0; i < done; i++)
                if (unregister_one(self, PySequence_Fast_GET_ITEM(bufs, i)))
                    PyErr_Clear();
            PyErr_Restore(t, v, tb);
        }
        engine_leave(self);
    }
    Py_DECREF(bufs), Py_DECREF(lens);
    return PyErr_Occurred() ? NULL : PyLong_FromLong(0);
}

static PyObject *Engine_batch_unregister_memory(EngineObject *self, PyObject *arg)
{
    PyObject *bufs = PySequence_Fast(arg, "buffer_addresses must be a sequence");
    if (!bufs)
        return NULL;
    if (engine_enter(self)) {
        Py_DECREF(bufs);
        return NULL;
    }
    PyObject *t = NULL, *v = NULL, *tb = NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(bufs); i++) {
        if (unregister_one(self, PySequence_Fast_GET_ITEM(bufs, i))) {
            if (t) /* keep the first error, go on with the others */
                PyErr_Clear();
            else
                PyErr_Fetch(&t, &v, &tb);
        }
    }
    engine_leave(self);
    Py_DECREF(bufs);
    if (t) {
        PyErr_Restore(t, v, tb);
        return NULL;
    }
    return PyLong_FromLong(0);
}

/* ---------------------------------------------------------------- managed buffers */

static struct slab *slab_get(EngineObject *self, int create, int *rc, char *why, size_t whylen)
{
    struct slab *s = __atomic_load_n(&self->slab, __ATOMIC_ACQUIRE);
    if (s || !create)
        return s;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->slab_lock);
    s = self->slab;
    if (!s) {
        *rc = slab_create(self->managed_pool_size, &s);
        if (*rc)
            snprintf(why, whylen, "%s", slab_last_error());
        else
            __atomic_store_n(&self->slab, s, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&self->slab_lock);
    Py_END_ALLOW_THREADS
    return s;
}

static PyObject *Engine_allocate_managed_buffer(EngineObject *self, PyObject *arg)
{
    uint64_t len;
    if (to_u64(arg, "length", &len))
        return NULL;
    if (len == 0 || len > MAX_LENGTH) {
        PyErr_Format(PyExc_ValueError, "length must be 1 .. 2**47, got %llu", (unsigned long long)len);
        return NULL;
    }
    if (engine_enter(self))
        return NULL;
    int rc = 0;
    char why[512] = "";
    uintptr_t addr = 0;
    struct slab *s = slab_get(self, 1, &rc, why, sizeof why);
    if (s) {
        Py_BEGIN_ALLOW_THREADS
        addr = slab_alloc(s, self->engine, (size_t)len);
        if (!addr)
            snprintf(why, sizeof why, "%s", slab_last_error());
        Py_END_ALLOW_THREADS
    }
    engine_leave(self);
    if (!addr)
        note_failure(rc ? rc : FERRY_ENOMEM, why);
    return PyLong_FromUnsignedLongLong(addr);
}

static PyObject *Engine_free_managed_buffer(EngineObject *self, PyObject *const *args, Py_ssize_t nargs,
                                            PyObject *kw)
{
    static const char *const names[] = {"buffer_addr", "length", NULL};
    PyObject *a[2];
    uint64_t addr, len;
    if (parse_args("free_managed_buffer", args, nargs, kw, names, 2, a) || to_u64(a[0], "buffer_addr", &addr) ||
        to_u64(a[1], "length", &len))
        return NULL;
    if (engine_enter(self))
        return NULL;
    int rc = 0;
    char why[512] = "";
    struct slab *s = slab_get(self, 0, &rc, why, sizeof why);
    if (!s) {
        rc = FERRY_EINVAL;
        snprintf(why, sizeof why, "0x%llx is not a managed buffer (none was allocated)", (unsigned long long)addr);
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = slab_free(s, self->engine, (uintptr_t)addr, (size_t)len);
        if (rc)
            snprintf(why, sizeof why, "%s", slab_last_error());
        Py_END_ALLOW_THREADS
    }
    engine_leave(self);
    if (rc)
        return raise_ferry(rc, why);
    return PyLong_FromLong(0);
}

static PyObject *Engine_managed_buffer_info(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    if (engine_enter(self))
        return NULL;
    int rc = 0;
    struct slab *s = slab_get(self, 0, &rc, NULL, 0);
    uintptr_t base = 0;
    size_t size = 0, used = 0, nlarge = 0;
    if (s) {
        Py_BEGIN_ALLOW_THREADS
        slab_info(s, &base, &size, &used, &nlarge);
        Py_END_ALLOW_THREADS
    }
    engine_leave(self);
    return Py_BuildValue("{s:K,s:n,s:n,s:n,s:n,s:n}", "base", (unsigned long long)base, "size", (Py_ssize_t)size,
                         "used", (Py_ssize_t)used, "large_buffers", (Py_ssize_t)nlarge, "min_block",
                         (Py_ssize_t)1 << SLAB_MIN_SHIFT, "max_block", (Py_ssize_t)1 << SLAB_MAX_SHIFT);
}

COMPAT_FASTKW(Engine_register_memory, 0)
COMPAT_O(Engine_unregister_memory, 0)
COMPAT_FASTKW(Engine_batch_register_memory, 0)
COMPAT_O(Engine_batch_unregister_memory, 0)
COMPAT_O(Engine_allocate_managed_buffer, 1)
COMPAT_FASTKW(Engine_free_managed_buffer, 0)

PyMethodDef memory_methods[] = {
    {"register_memory", (PyCFunction)(void (*)(void))compat_Engine_register_memory, FASTKW,
     "register_memory(buffer_addr, capacity=None, location=None, remote_accessible=True) -> 0\n\n"
     "buffer_addr: int address, buffer object (kept alive until unregistered) or tensor.\n"
     "capacity: bytes (default: the object's size).  location: 'cpu', 'cuda:N', 'npu:N', ... or\n"
     "None/'*' to detect (a tensor gives its own).  Raises FerryError (EEXIST overlap, ENODEV, EINVAL)."},
    {"unregister_memory", (PyCFunction)compat_Engine_unregister_memory, METH_O,
     "unregister_memory(buffer_addr) -> 0.  Raises FerryError(FERRY_ENOTREG) if not registered."},
    {"batch_register_memory", (PyCFunction)(void (*)(void))compat_Engine_batch_register_memory, FASTKW,
     "batch_register_memory(buffer_addresses, capacities, location=None) -> 0.  All or nothing."},
    {"batch_unregister_memory", (PyCFunction)compat_Engine_batch_unregister_memory, METH_O,
     "batch_unregister_memory(buffer_addresses) -> 0.  Raises the first error after trying all."},
    {"allocate_managed_buffer", (PyCFunction)compat_Engine_allocate_managed_buffer, METH_O,
     "allocate_managed_buffer(length) -> int address, or 0 when the pool is exhausted.\n\n"
     "Blocks of 4 KiB .. 16 MiB (power-of-two classes) come from one registered host region\n"
     "(TransferEngine(managed_pool_size=...), default 256 MiB) mapped on first use; larger\n"
     "lengths get a registered region of their own.  Thread-safe."},
    {"free_managed_buffer", (PyCFunction)(void (*)(void))compat_Engine_free_managed_buffer, FASTKW,
     "free_managed_buffer(buffer_addr, length) -> 0.  length as allocated.  Raises FerryError\n"
     "(FERRY_EINVAL) for a buffer that is not live (double free).  Transfers that touch a freed\n"
     "managed buffer raise FerryError(FERRY_ENOTREG)."},
    {"managed_buffer_info", (PyCFunction)Engine_managed_buffer_info, METH_NOARGS,
     "managed_buffer_info() -> dict(base, size, used, large_buffers, min_block, max_block)."},
    {NULL, NULL, 0, NULL},
};
