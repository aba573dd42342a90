/* SPDX-License-Identifier: Apache-2.0 */
/*
 * convert.c — Python arguments to what ferry.h takes: addresses, lengths,
 * request arrays, notification bytes.
 *
 * A local buffer may be an int (an address), any object with the buffer
 * protocol (bytearray, memoryview, numpy array: the view is held until the
 * transfer or registration ends, which also stops a bytearray from being
 * resized under ferry), or a torch-like tensor, recognised by its methods
 * (data_ptr, element_size) so that this module never imports torch.  A batch
 * is converted in one pass over the three sequences; ints take a fast path.
 * All functions run with the GIL held.
 */
#include "pyferry.h"

#include <stdio.h>
#include <string.h>

int to_u64(PyObject *obj, const char *what, uint64_t *out)
{
    PyObject *num = NULL;
    if (PyBool_Check(obj) || (!PyLong_Check(obj) && !PyIndex_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.80s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!PyLong_Check(obj)) {
        num = PyNumber_Index(obj);
        if (!num)
            return -1;
        obj = num;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        Py_XDECREF(num);
        return -1;
    }
    if (overflow < 0 || (!overflow && v < 0)) {
        PyErr_Format(PyExc_ValueError, "%s must not be negative, got %R", what, obj);
        Py_XDECREF(num);
        return -1;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s %R does not fit in 64 bits", what, obj);
            Py_XDECREF(num);
            return -1;
        }
        *out = u;
    } else {
        *out = (uint64_t)v;
    }
    Py_XDECREF(num);
    return 0;
}

/* Reads an attribute that is a method returning an int. */
static int call_int_method(PyObject *obj, const char *name, long long *out)
{
    PyObject *r = PyObject_CallMethod(obj, name, NULL);
    if (!r)
        return -1;
    *out = PyLong_AsLongLong(r);
    Py_DECREF(r);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* A torch-like tensor: contiguous memory at data_ptr(), numel()*element_size()
 * bytes, on device `device.type` index `device.index`. */
static int tensor_get(PyObject *obj, struct local_ref *out)
{
    long long ptr, numel, esize;
    if (call_int_method(obj, "data_ptr", &ptr) || call_int_method(obj, "numel", &numel) ||
        call_int_method(obj, "element_size", &esize))
        return -1;
    PyObject *contig = PyObject_CallMethod(obj, "is_contiguous", NULL);
    if (!contig)
        return -1;
    int ok = PyObject_IsTrue(contig);
    Py_DECREF(contig);
    if (ok < 0)
        return -1;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "tensor is not contiguous (call .contiguous() first)");
        return -1;
    }
    if (numel <= 0 || esize <= 0 || ptr == 0) {
        PyErr_SetString(PyExc_ValueError, "tensor is empty");
        return -1;
    }
    char type[16] = "cpu";
    long long index = -1;
    PyObject *dev = PyObject_GetAttrString(obj, "device");
    if (!dev)
        return -1;
    PyObject *t = PyObject_GetAttrString(dev, "type");
    PyObject *ix = t ? PyObject_GetAttrString(dev, "index") : NULL;
    Py_DECREF(dev);
    if (!t || !ix) {
        Py_XDECREF(t);
        return -1;
    }
    const char *ts = PyUnicode_Check(t) ? PyUnicode_AsUTF8(t) : NULL;
    if (ts)
        snprintf(type, sizeof type, "%s", ts);
    if (ix != Py_None)
        index = PyLong_AsLongLong(ix);
    Py_DECREF(t);
    Py_DECREF(ix);
    if (PyErr_Occurred())
        return -1;
    if (strcmp(type, "cpu") == 0)
        snprintf(out->location, sizeof out->location, "cpu");
    else
        snprintf(out->location, sizeof out->location, "%s:%lld", type, index < 0 ? 0 : index);
    out->addr = (uintptr_t)ptr;
    out->len = (size_t)numel * (size_t)esize;
    Py_INCREF(obj);
    out->keep = obj;
    return 0;
}

static int int_address(PyObject *obj, struct local_ref *out)
{
    uint64_t a;
    if (to_u64(obj, "buffer address", &a))
        return -1;
    out->addr = (uintptr_t)a; /* 0 (NULL) only with length 0: resolve_length says */
    return 0;
}

int local_ref_get(PyObject *obj, int writable, struct local_ref *out)
{
    memset(out, 0, sizeof *out);
    if (PyLong_Check(obj))
        return int_address(obj, out);
    if (PyObject_CheckBuffer(obj)) {
        int flags = writable ? (PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) : PyBUF_C_CONTIGUOUS;
        if (PyObject_GetBuffer(obj, &out->view, flags)) {
            /* a read-only integer scalar (numpy.uint64) is an address, not a buffer */
            if (!writable || !PyIndex_Check(obj) || !PyErr_ExceptionMatches(PyExc_BufferError))
                return -1;
            PyErr_Clear();
            if (PyObject_GetBuffer(obj, &out->view, PyBUF_C_CONTIGUOUS))
                return -1;
            if (out->view.ndim != 0) {
                PyBuffer_Release(&out->view);
                PyErr_SetString(PyExc_BufferError, "buffer is read-only; a writable one is needed here");
                return -1;
            }
        }
        out->has_view = 1;
        if (out->view.ndim == 0 && PyIndex_Check(obj)) { /* a numpy integer scalar: an address */
            local_ref_release(out);
            return int_address(obj, out);
        }
        if (out->view.ndim == 0) {
            local_ref_release(out);
            PyErr_Format(PyExc_TypeError, "buffer must be an int address, an array or a tensor, not a %.80s scalar",
                         Py_TYPE(obj)->tp_name);
            return -1;
        }
        if (out->view.len <= 0) {
            local_ref_release(out);
            PyErr_SetString(PyExc_ValueError, "buffer is empty");
            return -1;
        }
        out->addr = (uintptr_t)out->view.buf;
        out->len = (size_t)out->view.len;
        return 0;
    }
    if (PyObject_HasAttrString(obj, "data_ptr") && PyObject_HasAttrString(obj, "element_size"))
        return tensor_get(obj, out);
    if (PyIndex_Check(obj))
        return int_address(obj, out);
    PyErr_Format(PyExc_TypeError,
                 "buffer must be an int address, an object with the buffer protocol "
                 "(bytearray, memoryview, numpy array) or a tensor, not %.80s",
                 Py_TYPE(obj)->tp_name);
    return -1;
}

void local_ref_release(struct local_ref *r)
{
    if (r->has_view) {
        PyBuffer_Release(&r->view);
        r->has_view = 0;
    }
    Py_CLEAR(r->keep);
}

int resolve_length(PyObject *obj, const struct local_ref *r, const char *what, int zero_ok, size_t *out)
{
    if (!obj || obj == Py_None) {
        if (!r->len) {
            PyErr_Format(PyExc_ValueError, "%s is required when the buffer is an int address", what);
            return -1;
        }
        *out = r->len;
        return 0;
    }
    uint64_t v;
    if (to_u64(obj, what, &v))
        return -1;
    if (v == 0 && zero_ok) {
        *out = 0;
        return 0;
    }
    if (v == 0) {
        PyErr_Format(PyExc_ValueError, "%s must be positive, got 0", what);
        return -1;
    }
    if (r->addr == 0) {
        PyErr_SetString(PyExc_ValueError, "buffer address is 0 (NULL)");
        return -1;
    }
    if (v > MAX_LENGTH) {
        PyErr_Format(PyExc_ValueError, "%s %llu is larger than any buffer (limit 2**47)", what,
                     (unsigned long long)v);
        return -1;
    }
    if (r->len && v > r->len) {
        PyErr_Format(PyExc_ValueError, "%s %llu exceeds the buffer's %zu bytes", what, (unsigned long long)v,
                     r->len);
        return -1;
    }
    if (r->addr + v < r->addr) {
        PyErr_Format(PyExc_ValueError, "address 0x%lx + %s %llu wraps around", (unsigned long)r->addr, what,
                     (unsigned long long)v);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* ---------------------------------------------------------------- batches */

/* Fast path for exact ints: no attribute lookups, no index calls. */
static inline int item_u64(PyObject *o, const char *what, size_t i, uint64_t *out)
{
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow && v > 0) {
            *out = (uint64_t)v;
            return 0;
        }
    }
    char name[64];
    snprintf(name, sizeof name, "%s[%zu]", what, i);
    return to_u64(o, name, out);
}

static int length_check(uint64_t v, const char *what, size_t i, const struct local_ref *r)
{
    if (v > MAX_LENGTH) {
        PyErr_Format(PyExc_ValueError, "%s[%zu] = %llu: lengths must be 0 .. 2**47", what, i, (unsigned long long)v);
        return -1;
    }
    if (r && r->len && v > r->len) {
        PyErr_Format(PyExc_ValueError, "%s[%zu] = %llu exceeds buffers[%zu]'s %zu bytes", what, i,
                     (unsigned long long)v, i, r->len);
        return -1;
    }
    return 0;
}

int req_array_build(struct req_array *a, int opcode, ferry_segment_t seg, PyObject *buffers, PyObject *peers,
                    PyObject *lengths, int empty_ok)
{
    memset(a, 0, sizeof *a);
    if (PyUnicode_Check(buffers) || PyBytes_Check(buffers) || PyByteArray_Check(buffers)) {
        PyErr_SetString(PyExc_TypeError, "buffers must be a sequence of buffers or addresses");
        return -1;
    }
    PyObject *bufs = PySequence_Fast(buffers, "buffers must be a sequence (list or tuple)");
    if (!bufs)
        return -1;
    PyObject *pees = PySequence_Fast(peers, "peer_buffer_addresses must be a sequence (list or tuple)");
    PyObject *lens = NULL;
    uint64_t one_len = 0;
    int rc = -1, have_one = 0;
    if (!pees)
        goto out;
    if (lengths == Py_None) {
        /* each buffer object's own size */
    } else if (PyLong_Check(lengths)) {
        if (to_u64(lengths, "lengths", &one_len) || length_check(one_len, "lengths", 0, NULL))
            goto out;
        have_one = 1;
    } else if (!(lens = PySequence_Fast(lengths, "lengths must be a sequence (list or tuple) or an int"))) {
        goto out;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(bufs);
    if (PySequence_Fast_GET_SIZE(pees) != n || (lens && PySequence_Fast_GET_SIZE(lens) != n)) {
        PyErr_Format(PyExc_ValueError, "buffers has %zd items, peer_buffer_addresses %zd, lengths %zd", n,
                     PySequence_Fast_GET_SIZE(pees), lens ? PySequence_Fast_GET_SIZE(lens) : n);
        goto out;
    }
    if (n == 0 && empty_ok) {
        rc = 0; /* a->n == 0, nothing allocated */
        goto out;
    }
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "the batch is empty");
        goto out;
    }
    if (n > (1 << 24)) {
        PyErr_Format(PyExc_ValueError, "a batch holds at most 16777216 requests, got %zd", n);
        goto out;
    }
    a->reqs = PyMem_Malloc((size_t)n * sizeof *a->reqs);
    if (!a->reqs) {
        PyErr_NoMemory();
        goto out;
    }
    PyObject **bi = PySequence_Fast_ITEMS(bufs), **pi = PySequence_Fast_ITEMS(pees);
    PyObject **li = lens ? PySequence_Fast_ITEMS(lens) : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        struct ferry_request *q = &a->reqs[i];
        struct local_ref *r = NULL;
        uint64_t src, len = one_len, peer;
        if (PyLong_CheckExact(bi[i])) {
            if (item_u64(bi[i], "buffers", (size_t)i, &src))
                goto fail;
        } else {
            if (!a->refs && !(a->refs = PyMem_Calloc((size_t)n, sizeof *a->refs))) {
                PyErr_NoMemory();
                goto fail;
            }
            r = &a->refs[i];
            if (local_ref_get(bi[i], opcode == FERRY_READ, r)) {
                PyObject *t, *v, *tb;
                PyErr_Fetch(&t, &v, &tb);
                PyErr_NormalizeException(&t, &v, &tb);
                PyErr_Format(t ? t : PyExc_TypeError, "buffers[%zd]: %S", i, v ? v : Py_None);
                Py_XDECREF(t), Py_XDECREF(v), Py_XDECREF(tb);
                goto fail;
            }
            src = r->addr;
        }
        if (li) {
            if (item_u64(li[i], "lengths", (size_t)i, &len))
                goto fail;
        } else if (!have_one) {
            if (!r || !r->len) {
                PyErr_Format(PyExc_ValueError,
                             "buffers[%zd] is an int address: lengths is required", i);
                goto fail;
            }
            len = r->len;
        }
        if (length_check(len, "lengths", (size_t)i, r) || item_u64(pi[i], "peer_buffer_addresses", (size_t)i, &peer))
            goto fail;
        if (src == 0 && len) { /* a zero-length request touches no memory: any address */
            PyErr_Format(PyExc_ValueError, "buffers[%zd] is address 0 (NULL)", i);
            goto fail;
        }
        q->opcode = opcode;
        q->source = (void *)(uintptr_t)src;
        q->target = seg;
        q->target_offset = peer;
        q->length = (size_t)len;
    }
    a->n = (size_t)n;
    rc = 0;
    goto out;
fail:
    a->n = (size_t)n;
    req_array_release(a);
out:
    Py_DECREF(bufs);
    Py_XDECREF(pees);
    Py_XDECREF(lens);
    return rc;
}

void req_array_release(struct req_array *a)
{
    if (a->refs) {
        for (size_t i = 0; i < a->n; i++)
            local_ref_release(&a->refs[i]);
        PyMem_Free(a->refs);
    }
    PyMem_Free(a->reqs);
    memset(a, 0, sizeof *a);
}

int notify_get(PyObject *obj, Py_buffer *buf, int *has)
{
    *has = 0;
    if (!obj || obj == Py_None)
        return 0;
    if (PyUnicode_Check(obj)) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(obj, &len);
        if (!s || PyBuffer_FillInfo(buf, obj, (void *)s, len, 1, PyBUF_SIMPLE))
            return -1;
    } else if (PyObject_GetBuffer(obj, buf, PyBUF_C_CONTIGUOUS)) {
        PyErr_Format(PyExc_TypeError, "notify must be bytes-like or str, not %.80s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (buf->len > 4096) {
        PyErr_Format(PyExc_ValueError, "notify is %zd bytes; at most 4096 are allowed", buf->len);
        PyBuffer_Release(buf);
        return -1;
    }
    *has = 1;
    return 0;
}
