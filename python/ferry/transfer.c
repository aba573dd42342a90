/* SPDX-License-Identifier: Apache-2.0 */
/*
 * transfer.c — the transfer methods of TransferEngine: sync and batch WRITE /
 * READ, async batches (their ids go into the batch table of batches.c).
 *
 * Every transfer is one ferry batch: the requests are converted in one pass
 * (convert.c), checked against the managed-buffer slab, then allocated,
 * submitted and (for the sync calls) waited on in one stretch with the GIL
 * released.  Async batches go into the batch table (batches.c), which keeps
 * them with the buffer views and tensors they use until they are collected.
 *
 * Return convention: errors in the call (types, values, unknown segment,
 * unregistered or freed local memory, remote range outside the peer's
 * buffers) raise before anything is sent; a transfer that fails after it was
 * accepted returns its negative FERRY_E* code.
 */
#include "pyferry.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void outcome_fail(struct outcome *o, int rc, enum stage stage)
{
    o->rc = rc;
    o->stage = stage;
    snprintf(o->why, sizeof o->why, "%s", ferry_last_error());
}

void outcome_closing(const EngineObject *self, struct outcome *o)
{
    if (o->rc != FERRY_ENOSEG || !self->life_writer)
        return;
    o->rc = FERRY_ECANCELED;
    snprintf(o->why, sizeof o->why, "another thread closed the engine during the call");
}

/* Converts an outcome to the Python result: 0, a negative code, or raises. */
PyObject *outcome_result(const struct outcome *o)
{
    if (!o->rc)
        return PyLong_FromLong(0);
    if (o->stage == STAGE_SUBMIT && is_call_error(o->rc))
        return raise_ferry(o->rc, o->why);
    note_failure(o->rc, o->why);
    return PyLong_FromLong(o->rc);
}

/* Allocates and submits a batch.  No GIL needed.  On failure nothing is left. */
static ferry_batch *submit_nogil(ferry_engine *e, const struct ferry_request *reqs, size_t n, const Py_buffer *note,
                                 struct outcome *o)
{
    ferry_batch *b = NULL;
    int rc = ferry_batch_alloc(e, n, &b);
    if (!rc && note)
        rc = ferry_batch_set_notify(b, note->buf, (size_t)note->len);
    if (!rc)
        rc = ferry_batch_submit(b, reqs, n);
    if (rc) {
        outcome_fail(o, rc, STAGE_SUBMIT);
        ferry_batch_free(b);
        return NULL;
    }
    return b;
}

/* Raises if a request touches a freed managed buffer. */
static int check_managed(EngineObject *self, const struct ferry_request *reqs, size_t n)
{
    struct slab *s = __atomic_load_n(&self->slab, __ATOMIC_ACQUIRE);
    if (!s)
        return 0;
    size_t bad = slab_check_requests(s, reqs, n);
    if (!bad)
        return 0;
    raise_ferry_fmt(FERRY_ENOTREG, "request %zu: %s", bad - 1, slab_last_error());
    return -1;
}

static int opcode_arg(PyObject *obj, int *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v != FERRY_READ && v != FERRY_WRITE) {
        PyErr_Format(PyExc_ValueError, "opcode must be READ (0) or WRITE (1), got %ld", v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* ---------------------------------------------------------------- sync */

/* One transfer of one buffer: args (target, buffer, peer, length, notify). */
static PyObject *sync_one(EngineObject *self, int opcode, PyObject *target, PyObject *buffer, PyObject *peer,
                          PyObject *length, PyObject *notify)
{
    struct ferry_request q = {.opcode = opcode};
    struct local_ref r;
    uint64_t peer_addr;
    Py_buffer note;
    int has_note = 0;
    if (to_u64(peer, "peer_buffer_address", &peer_addr) || local_ref_get(buffer, opcode == FERRY_READ, &r))
        return NULL;
    if (resolve_length(length, &r, "length", 1, &q.length) || notify_get(notify, &note, &has_note)) {
        local_ref_release(&r);
        return NULL;
    }
    PyObject *result = NULL;
    if (engine_enter(self))
        goto out;
    q.source = (void *)r.addr;
    q.target_offset = peer_addr;
    if (segment_lookup(self, target, &q.target) || check_managed(self, &q, 1)) {
        engine_leave(self);
        goto out;
    }
    struct outcome o = {0};
    ferry_engine *e = self->engine;
    Py_BEGIN_ALLOW_THREADS
    ferry_batch *b = submit_nogil(e, &q, 1, has_note ? &note : NULL, &o);
    if (b) {
        int rc = ferry_batch_wait(b, -1);
        if (rc)
            outcome_fail(&o, rc, STAGE_WAIT);
        ferry_batch_free(b);
    }
    Py_END_ALLOW_THREADS
    outcome_closing(self, &o);
    engine_leave(self);
    result = outcome_result(&o);
out:
    if (has_note)
        PyBuffer_Release(&note);
    local_ref_release(&r);
    return result;
}

/* The reference's order: the 5th positional argument is transport_hint;
 * notify (ferry's) only by keyword. */
static const char *const sync_names[] = {"target_hostname", "buffer", "peer_buffer_address", "length",
                                         "transport_hint", "notify", NULL};

/* transport_hint: a str (or None).  Ignored, as the reference's classic
 * engine ignores it: ferry picks the best transport per request itself. */
static int hint_check(PyObject *hint)
{
    if (!hint || hint == Py_None || PyUnicode_Check(hint))
        return 0;
    PyErr_Format(PyExc_TypeError, "transport_hint must be a str, not %.80s", Py_TYPE(hint)->tp_name);
    return -1;
}

static PyObject *T_transfer_sync_write(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    PyObject *a[6];
    if (parse_args("transfer_sync_write", args, nargs, kw, sync_names, 3, a) || hint_check(a[4]))
        return NULL;
    return sync_one(self, FERRY_WRITE, a[0], a[1], a[2], a[3], a[5]);
}

static PyObject *T_transfer_sync_read(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    PyObject *a[6];
    if (parse_args("transfer_sync_read", args, nargs, kw, sync_names, 3, a) || hint_check(a[4]))
        return NULL;
    return sync_one(self, FERRY_READ, a[0], a[1], a[2], a[3], a[5]);
}

static PyObject *T_transfer_sync(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"target_hostname", "buffer", "peer_buffer_address", "length",
                                        "opcode", "notify", "transport_hint", NULL};
    PyObject *a[7];
    int op;
    if (parse_args("transfer_sync", args, nargs, kw, names, 5, a) || opcode_arg(a[4], &op) || hint_check(a[6]))
        return NULL;
    return sync_one(self, op, a[0], a[1], a[2], a[3], a[5]);
}

/* ---------------------------------------------------------------- batches */

/* A batch of no request, as the reference answers it (compat class only):
 * allocateBatchID(0) and submitTransfer(id, {}) succeed and the batch's
 * status is COMPLETED, so sync returns 0 and async an id that polls as
 * completed; a notification is refused ("entries must not be empty").
 * Engine entered (the caller leaves it). */
static PyObject *run_empty_batch(EngineObject *self, int sync, int has_note)
{
    if (has_note) {
        note_failure(FERRY_EINVAL, "a notification needs at least one request: the request lists are empty");
        return PyLong_FromLong(sync ? FERRY_EINVAL : 0);
    }
    if (sync)
        return PyLong_FromLong(0);
    ferry_batch *b = NULL;
    int rc = ferry_batch_alloc(self->engine, 1, &b); /* never submitted: it has ended */
    struct pybatch *pb = rc ? NULL : PyMem_Malloc(sizeof *pb);
    PyObject *id = NULL;
    if (pb) {
        *pb = (struct pybatch){b, 0, NULL, 0, 0};
        if (!(id = batch_store(self, pb)))
            PyMem_Free(pb);
    }
    if (!id) {
        ferry_batch_free(b);
        if (rc)
            note_failure(rc, NULL);
        return rc ? PyLong_FromLong(0) : (PyErr_Occurred() ? NULL : PyErr_NoMemory());
    }
    return id;
}

/* Builds and submits a batch; sync waits and frees it, async stores it.
 * Returns 0 / negative code (sync), a batch id or 0 (async), or raises. */
static PyObject *run_batch(EngineObject *self, int opcode, int sync, PyObject *target, PyObject *buffers,
                           PyObject *peers, PyObject *lengths, PyObject *notify)
{
    struct req_array a;
    Py_buffer note;
    int has_note = 0;
    ferry_segment_t seg;
    PyObject *result = NULL;
    if (!lengths)
        lengths = Py_None;
    if (notify_get(notify, &note, &has_note))
        return NULL;
    if (engine_enter(self))
        goto out_note;
    if (segment_lookup(self, target, &seg) ||
        req_array_build(&a, opcode, seg, buffers, peers, lengths, !self->strict)) {
        engine_leave(self);
        goto out_note;
    }
    if (a.n == 0) {
        result = run_empty_batch(self, sync, has_note);
        engine_leave(self);
        goto out_note;
    }
    if (check_managed(self, a.reqs, a.n)) {
        engine_leave(self);
        req_array_release(&a);
        goto out_note;
    }
    struct outcome o = {0};
    ferry_engine *e = self->engine;
    ferry_batch *b;
    Py_BEGIN_ALLOW_THREADS
    b = submit_nogil(e, a.reqs, a.n, has_note ? &note : NULL, &o);
    if (b && sync) {
        int rc = ferry_batch_wait(b, -1);
        if (rc)
            outcome_fail(&o, rc, STAGE_WAIT);
        ferry_batch_free(b);
    }
    Py_END_ALLOW_THREADS
    outcome_closing(self, &o);
    engine_leave(self);
    if (sync || !b) {
        req_array_release(&a);
        if (!sync && !(o.stage == STAGE_SUBMIT && is_call_error(o.rc))) { /* async: 0 on failure */
            note_failure(o.rc, o.why);
            result = PyLong_FromLong(0);
        } else {
            result = outcome_result(&o);
        }
        goto out_note;
    }
    /* async: the record keeps the views alive until the batch is collected */
    struct pybatch *pb = PyMem_Malloc(sizeof *pb);
    if (pb) {
        *pb = (struct pybatch){b, a.n, a.refs, 0, 0};
        PyMem_Free(a.reqs); /* ferry copied the requests at submit */
        if (!(result = batch_store(self, pb))) {
            Py_BEGIN_ALLOW_THREADS
            ferry_batch_free(b);
            Py_END_ALLOW_THREADS
            pybatch_release_refs(pb);
        }
    } else {
        Py_BEGIN_ALLOW_THREADS
        ferry_batch_free(b);
        Py_END_ALLOW_THREADS
        req_array_release(&a);
        PyErr_NoMemory();
    }
out_note:
    if (has_note)
        PyBuffer_Release(&note);
    return result;
}

static const char *const batch_names[] = {"target_hostname", "buffers", "peer_buffer_addresses", "lengths",
                                          "transport_hint", "notify", NULL};
static const char *const batch_op_names[] = {"target_hostname", "buffers", "peer_buffer_addresses", "lengths",
                                             "opcode", "notify", "transport_hint", NULL};
/* the reference's batch_transfer_async has no notify: its 6th positional is transport_hint */
static const char *const batch_async_op_names[] = {"target_hostname", "buffers", "peer_buffer_addresses", "lengths",
                                                   "opcode", "transport_hint", "notify", NULL};

#define BATCH_METHOD(fn, pyname, op, sync)                                                                  \
    static PyObject *fn(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)          \
    {                                                                                                       \
        PyObject *a[6];                                                                                     \
        if (parse_args(pyname, args, nargs, kw, batch_names, 3, a) || hint_check(a[4]))                     \
            return NULL;                                                                                    \
        return run_batch(self, op, sync, a[0], a[1], a[2], a[3], a[5]);                                    \
    }
BATCH_METHOD(T_batch_transfer_sync_write, "batch_transfer_sync_write", FERRY_WRITE, 1)
BATCH_METHOD(T_batch_transfer_sync_read, "batch_transfer_sync_read", FERRY_READ, 1)
BATCH_METHOD(T_batch_transfer_async_write, "batch_transfer_async_write", FERRY_WRITE, 0)
BATCH_METHOD(T_batch_transfer_async_read, "batch_transfer_async_read", FERRY_READ, 0)

static PyObject *batch_with_opcode(EngineObject *self, const char *name, int sync, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *kw)
{
    PyObject *a[7];
    int op;
    const int hint = sync ? 6 : 5, notify = sync ? 5 : 6;
    if (parse_args(name, args, nargs, kw, sync ? batch_op_names : batch_async_op_names, 5, a) ||
        opcode_arg(a[4], &op) || hint_check(a[hint]))
        return NULL;
    return run_batch(self, op, sync, a[0], a[1], a[2], a[3], a[notify]);
}

static PyObject *T_batch_transfer_sync(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    return batch_with_opcode(self, "batch_transfer_sync", 1, args, nargs, kw);
}

static PyObject *T_batch_transfer_async(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    return batch_with_opcode(self, "batch_transfer_async", 0, args, nargs, kw);
}

static PyObject *T_transfer_submit_write(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    PyObject *a[6];
    if (parse_args("transfer_submit_write", args, nargs, kw, sync_names, 4, a) || hint_check(a[4]))
        return NULL;
    PyObject *bufs = PyTuple_Pack(1, a[1]), *peers = PyTuple_Pack(1, a[2]), *lens = PyTuple_Pack(1, a[3]);
    PyObject *r = bufs && peers && lens ? run_batch(self, FERRY_WRITE, 0, a[0], bufs, peers, lens, a[5]) : NULL;
    Py_XDECREF(bufs), Py_XDECREF(peers), Py_XDECREF(lens);
    return r;
}

/* ---------------------------------------------------------------- stream-ordered */

/* Frees the stream-ordered batches that have ended (they have no id the
 * caller collects: the reference's *_on_cuda return nothing). */
static void stream_batches_reap(EngineObject *self)
{
    Py_ssize_t n = PyList_GET_SIZE(self->stream_batches);
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        PyObject *id = PyList_GET_ITEM(self->stream_batches, i);
        struct pybatch *b = batch_find(self, id, 0);
        if (b && ferry_batch_wait(b->batch, 0) == FERRY_ETIMEDOUT)
            continue;
        if (b && (b = batch_find(self, id, 1)) != NULL)
            pybatch_collect(b);
        PyErr_Clear(); /* an id close() already collected */
        PySequence_DelItem(self->stream_batches, i);
    }
}

/* The reference's *_on_cuda: the transfer starts when the stream reaches it
 * and later work on the stream waits for it (ferry_batch_submit_on_stream).
 * Returns 0, or fails as the other transfers do. */
static PyObject *run_on_stream(EngineObject *self, int opcode, PyObject *target, PyObject *buffers, PyObject *peers,
                               PyObject *lengths, PyObject *stream, PyObject *location)
{
    uint64_t stream_ptr = 0;
    int err = 0;
    const char *loc = opt_str(location, "location", &err);
    if (err || (stream && stream != Py_None && to_u64(stream, "stream_ptr", &stream_ptr)))
        return NULL;
    struct req_array a;
    ferry_segment_t seg;
    if (engine_enter(self))
        return NULL;
    stream_batches_reap(self);
    if (segment_lookup(self, target, &seg) ||
        req_array_build(&a, opcode, seg, buffers, peers, lengths, !self->strict)) {
        engine_leave(self);
        return NULL;
    }
    if (a.n == 0) { /* the reference's callback submits nothing and lets the stream go on */
        engine_leave(self);
        return PyLong_FromLong(0);
    }
    if (!loc) /* a tensor says where it lives; else the first GPU */
        loc = a.refs && a.refs[0].location[0] ? a.refs[0].location : "cuda:0";
    char where[LOCATION_MAX];
    snprintf(where, sizeof where, "%s", loc);
    if (check_managed(self, a.reqs, a.n)) {
        engine_leave(self);
        req_array_release(&a);
        return NULL;
    }
    ferry_engine *e = self->engine;
    ferry_batch *b = NULL;
    struct outcome o = {0};
    Py_BEGIN_ALLOW_THREADS
    int rc = ferry_batch_alloc(e, a.n, &b);
    if (!rc)
        rc = ferry_batch_submit_on_stream(b, a.reqs, a.n, where, (void *)(uintptr_t)stream_ptr);
    if (rc)
        outcome_fail(&o, rc, STAGE_SUBMIT);
    if (rc && b && ferry_batch_size(b) == 0 && ferry_batch_wait(b, 0) != FERRY_ETIMEDOUT) {
        ferry_batch_free(b); /* nothing was enqueued */
        b = NULL;
    }
    Py_END_ALLOW_THREADS
    outcome_closing(self, &o);
    PyObject *result = NULL;
    struct pybatch *pb = b ? PyMem_Malloc(sizeof *pb) : NULL;
    if (pb) { /* kept, with the views it uses, until it ended */
        *pb = (struct pybatch){b, a.n, a.refs, 0, 0};
        PyMem_Free(a.reqs);
        PyObject *id = batch_store(self, pb);
        if (!id || PyList_Append(self->stream_batches, id)) {
            Py_XDECREF(id);
            engine_leave(self);
            return NULL; /* the batch stays in self->batches for close() */
        }
        Py_DECREF(id);
    } else {
        if (b) { /* out of memory: wait here rather than free a running batch */
            Py_BEGIN_ALLOW_THREADS
            ferry_batch_free(b);
            Py_END_ALLOW_THREADS
        }
        req_array_release(&a);
    }
    engine_leave(self);
    if (b && !pb)
        return PyErr_NoMemory();
    result = outcome_result(&o);
    return result;
}

static const char *const on_cuda_names[] = {"target_hostname", "buffer", "peer_buffer_address", "length",
                                            "stream_ptr", "transport_hint", "location", NULL};
static const char *const batch_on_cuda_names[] = {"target_hostname", "buffers", "peer_buffer_addresses", "lengths",
                                                  "stream_ptr", "transport_hint", "location", NULL};

static PyObject *one_on_stream(EngineObject *self, const char *name, int opcode, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kw)
{
    PyObject *a[7];
    if (parse_args(name, args, nargs, kw, on_cuda_names, 4, a) || hint_check(a[5]))
        return NULL;
    PyObject *bufs = PyTuple_Pack(1, a[1]), *peers = PyTuple_Pack(1, a[2]), *lens = PyTuple_Pack(1, a[3]);
    PyObject *r = bufs && peers && lens ? run_on_stream(self, opcode, a[0], bufs, peers, lens, a[4], a[6]) : NULL;
    Py_XDECREF(bufs), Py_XDECREF(peers), Py_XDECREF(lens);
    return r;
}

static PyObject *T_transfer_write_on_cuda(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    return one_on_stream(self, "transfer_write_on_cuda", FERRY_WRITE, args, nargs, kw);
}

static PyObject *T_transfer_read_on_cuda(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    return one_on_stream(self, "transfer_read_on_cuda", FERRY_READ, args, nargs, kw);
}

static PyObject *batch_on_stream(EngineObject *self, const char *name, int opcode, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kw)
{
    PyObject *a[7];
    if (parse_args(name, args, nargs, kw, batch_on_cuda_names, 4, a) || hint_check(a[5]))
        return NULL;
    return run_on_stream(self, opcode, a[0], a[1], a[2], a[3], a[4], a[6]);
}

static PyObject *T_batch_transfer_write_on_cuda(EngineObject *self, PyObject *const *args, Py_ssize_t nargs,
                                                PyObject *kw)
{
    return batch_on_stream(self, "batch_transfer_write_on_cuda", FERRY_WRITE, args, nargs, kw);
}

static PyObject *T_batch_transfer_read_on_cuda(EngineObject *self, PyObject *const *args, Py_ssize_t nargs,
                                               PyObject *kw)
{
    return batch_on_stream(self, "batch_transfer_read_on_cuda", FERRY_READ, args, nargs, kw);
}

/* ---------------------------------------------------------------- benchmark hook */

static double clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* _bench_sync_loop(target, addr, peer, length, iterations) -> (wall_ns, cpu_ns):
 * what `iterations` transfer_sync_write calls do in C, without Python around
 * them, on this engine and its connections (bench/python_overhead.py). */
static PyObject *T_bench_sync_loop(EngineObject *self, PyObject *args)
{
    PyObject *target;
    unsigned long long addr, peer, len;
    Py_ssize_t iterations;
    if (!PyArg_ParseTuple(args, "OKKKn:_bench_sync_loop", &target, &addr, &peer, &len, &iterations))
        return NULL;
    struct ferry_request q = {.opcode = FERRY_WRITE, .source = (void *)(uintptr_t)addr, .target_offset = peer,
                              .length = (size_t)len};
    if (engine_enter(self))
        return NULL;
    if (segment_lookup(self, target, &q.target)) {
        engine_leave(self);
        return NULL;
    }
    struct outcome o = {0};
    ferry_engine *e = self->engine;
    double wall, cpu;
    Py_BEGIN_ALLOW_THREADS
    double t0 = clock_ns(CLOCK_MONOTONIC), c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (Py_ssize_t i = 0; i < iterations && !o.rc; i++) {
        ferry_batch *b = submit_nogil(e, &q, 1, NULL, &o);
        if (b) {
            int rc = ferry_batch_wait(b, -1);
            if (rc)
                outcome_fail(&o, rc, STAGE_WAIT);
            ferry_batch_free(b);
        }
    }
    wall = clock_ns(CLOCK_MONOTONIC) - t0;
    cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
    Py_END_ALLOW_THREADS
    outcome_closing(self, &o);
    engine_leave(self);
    if (o.rc)
        return raise_ferry(o.rc, o.why);
    return Py_BuildValue("(dd)", wall, cpu);
}

/* ---------------------------------------------------------------- table */

COMPAT_FASTKW(T_transfer_sync_write, 0)
COMPAT_FASTKW(T_transfer_sync_read, 0)
COMPAT_FASTKW(T_transfer_sync, 0)
COMPAT_FASTKW(T_batch_transfer_sync_write, 0)
COMPAT_FASTKW(T_batch_transfer_sync_read, 0)
COMPAT_FASTKW(T_batch_transfer_sync, 0)
COMPAT_FASTKW(T_batch_transfer_async_write, 1)
COMPAT_FASTKW(T_batch_transfer_async_read, 1)
COMPAT_FASTKW(T_batch_transfer_async, 1)
COMPAT_FASTKW(T_transfer_submit_write, 1)
COMPAT_FASTKW(T_transfer_write_on_cuda, 0)
COMPAT_FASTKW(T_transfer_read_on_cuda, 0)
COMPAT_FASTKW(T_batch_transfer_write_on_cuda, 0)
COMPAT_FASTKW(T_batch_transfer_read_on_cuda, 0)

PyMethodDef transfer_methods[] = {
    M("transfer_sync_write", compat_T_transfer_sync_write, FASTKW,
      "transfer_sync_write(target_hostname, buffer, peer_buffer_address, length=None, notify=None) -> int\n\n"
      "WRITEs length bytes from buffer (int address, buffer object or tensor; length defaults to\n"
      "its size) to peer_buffer_address in segment target_hostname and waits.  Returns 0, or a\n"
      "negative FERRY_E* code if the transfer failed (ferry.last_error() says why).  Raises\n"
      "TypeError/ValueError for bad arguments, FerryError for an unknown segment (FERRY_ENOSEG),\n"
      "unregistered or freed local memory (FERRY_ENOTREG), a remote range outside the peer's\n"
      "buffers (FERRY_ERANGE).  The GIL is released while waiting."),
    M("transfer_sync_read", compat_T_transfer_sync_read, FASTKW,
      "transfer_sync_read(target_hostname, buffer, peer_buffer_address, length=None, notify=None) -> int\n\n"
      "READs into buffer; otherwise as transfer_sync_write."),
    M("transfer_sync", compat_T_transfer_sync, FASTKW,
      "transfer_sync(target_hostname, buffer, peer_buffer_address, length, opcode, notify=None) -> int"),
    M("batch_transfer_sync_write", compat_T_batch_transfer_sync_write, FASTKW,
      "batch_transfer_sync_write(target_hostname, buffers, peer_buffer_addresses, lengths, notify=None) -> int\n\n"
      "One batch (one C call, GIL released) of WRITEs; lengths may be a list, one int for all, or\n"
      "None (each buffer object's size).  notify: bytes/str (<= 4096) delivered to the target after\n"
      "all data is there.  Returns 0 or the first failure's negative code; raises as\n"
      "transfer_sync_write for bad arguments."),
    M("batch_transfer_sync_read", compat_T_batch_transfer_sync_read, FASTKW,
      "batch_transfer_sync_read(target_hostname, buffers, peer_buffer_addresses, lengths, notify=None) -> int"),
    M("batch_transfer_sync", compat_T_batch_transfer_sync, FASTKW,
      "batch_transfer_sync(target_hostname, buffers, peer_buffer_addresses, lengths, opcode, notify=None) -> int"),
    M("batch_transfer_async_write", compat_T_batch_transfer_async_write, FASTKW,
      "batch_transfer_async_write(target_hostname, buffers, peer_buffer_addresses, lengths, notify=None)\n"
      "-> batch id (> 0), or 0 if submitting failed at run time.  Collect it with\n"
      "get_batch_transfer_status([id]), transfer_check_status(id) or free_batch(id); buffer\n"
      "objects stay referenced until then."),
    M("batch_transfer_async_read", compat_T_batch_transfer_async_read, FASTKW,
      "batch_transfer_async_read(target_hostname, buffers, peer_buffer_addresses, lengths, notify=None) -> id"),
    M("batch_transfer_async", compat_T_batch_transfer_async, FASTKW,
      "batch_transfer_async(target_hostname, buffers, peer_buffer_addresses, lengths, opcode, transport_hint=\"\",\n"
      "                     notify=None) -> id"),
    M("transfer_submit_write", compat_T_transfer_submit_write, FASTKW,
      "transfer_submit_write(target_hostname, buffer, peer_buffer_address, length) -> batch id"),
    M("transfer_write_on_cuda", compat_T_transfer_write_on_cuda, FASTKW,
      "transfer_write_on_cuda(target_hostname, buffer, peer_buffer_address, length, stream_ptr=0,\n"
      "transport_hint='', location=None) -> 0\n\n"
      "WRITE ordered with a CUDA stream (cudaStream_t as an int; 0 the legacy default stream): it\n"
      "starts when the stream reaches it, and later work on the stream waits until it ended; the\n"
      "caller's thread does not wait.  location: the stream's device ('cuda:N'; default the tensor's\n"
      "device, else cuda:0).  A transfer that fails later is logged and releases the stream (the\n"
      "reference exits the process).  Returns 0, or a negative code if it was refused."),
    M("transfer_read_on_cuda", compat_T_transfer_read_on_cuda, FASTKW,
      "transfer_read_on_cuda(target_hostname, buffer, peer_buffer_address, length, stream_ptr=0, ...) -> 0"),
    M("batch_transfer_write_on_cuda", compat_T_batch_transfer_write_on_cuda, FASTKW,
      "batch_transfer_write_on_cuda(target_hostname, buffers, peer_buffer_addresses, lengths, stream_ptr=0, ...)"),
    M("batch_transfer_read_on_cuda", compat_T_batch_transfer_read_on_cuda, FASTKW,
      "batch_transfer_read_on_cuda(target_hostname, buffers, peer_buffer_addresses, lengths, stream_ptr=0, ...)"),
    M("_bench_sync_loop", T_bench_sync_loop, METH_VARARGS,
      "_bench_sync_loop(target, addr, peer, length, n) -> (wall_ns, cpu_ns) of n sync WRITEs done in C\n"
      "(for bench/python_overhead.py: the same work as transfer_sync_write, minus Python)."),
    {NULL, NULL, 0, NULL},
};
