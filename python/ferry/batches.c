/* SPDX-License-Identifier: Apache-2.0 */
/*
 * batches.c — the batch table of a TransferEngine and the calls that poll,
 * wait for and collect its batches: get_batch_transfer_status,
 * transfer_check_status, batch_status, wait_batch, free_batch.
 *
 * Async batches (transfer.c) live in self->batches (id -> capsule of a
 * struct pybatch) together with the buffer views and tensors they use,
 * until one of these calls collects them.  Threads: the table is touched
 * with the GIL held; waits release it.
 *
 * A batch transfer_check_status saw end (1, -1, or -2: timed out) is freed
 * at once, and its result kept in self->ended: the reference returns -2
 * again for a timed-out batch (it does not free it, transfer_engine_py.cpp
 * transferCheckStatus), so callers poll it again; ferry answers the same for
 * every later call, until get_batch_transfer_status or free_batch collects
 * the id.  Only the most recent ENDED_MAX results are kept: an id nobody
 * collects costs a bounded few bytes, never a batch or its buffers.
 */
#include "pyferry.h"

#include <stdio.h>
#include <string.h>

#define ENDED_MAX 4096

/* ---------------------------------------------------------------- batch table */

/* Stores b under a new id and returns the id (or NULL, b untouched). */
PyObject *batch_store(EngineObject *self, struct pybatch *b)
{
    PyObject *key = PyLong_FromUnsignedLongLong(self->next_batch_id++);
    PyObject *cap = key ? PyCapsule_New(b, "ferry.batch", NULL) : NULL;
    if (!cap || PyDict_SetItem(self->batches, key, cap)) {
        Py_XDECREF(key), Py_XDECREF(cap);
        return NULL;
    }
    Py_DECREF(cap);
    return key;
}

struct pybatch *batch_find(EngineObject *self, PyObject *id, int pop)
{
    if (!PyLong_Check(id)) {
        PyErr_Format(PyExc_TypeError, "batch id must be an int, not %.80s", Py_TYPE(id)->tp_name);
        return NULL;
    }
    PyObject *cap = PyDict_GetItemWithError(self->batches, id);
    if (!cap) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "unknown batch id %R (never returned, or already collected)", id);
        return NULL;
    }
    struct pybatch *b = PyCapsule_GetPointer(cap, "ferry.batch");
    if (b && pop && PyDict_DelItem(self->batches, id))
        return NULL;
    return b;
}

/* Remembers the result (1, -1, -2) and code of a batch transfer_check_status
 * collected; the oldest result goes when ENDED_MAX are kept.  0 or -1. */
static int ended_remember(EngineObject *self, PyObject *id, int result, int code)
{
    if (PyDict_Size(self->ended) >= ENDED_MAX) {
        Py_ssize_t pos = 0;
        PyObject *oldest, *v;
        if (PyDict_Next(self->ended, &pos, &oldest, &v)) {
            Py_INCREF(oldest);
            int bad = PyDict_DelItem(self->ended, oldest);
            Py_DECREF(oldest);
            if (bad)
                return -1;
        }
    }
    PyObject *v = Py_BuildValue("(ii)", result, code);
    int bad = !v || PyDict_SetItem(self->ended, id, v);
    Py_XDECREF(v);
    return bad ? -1 : 0;
}

/* Looks id up among the remembered results: 1 found (*result, *code set;
 * pop forgets it), 0 not there, -1 error set. */
static int ended_find(EngineObject *self, PyObject *id, int pop, int *result, int *code)
{
    if (!PyLong_Check(id))
        return 0;
    PyObject *v = PyDict_GetItemWithError(self->ended, id);
    if (!v)
        return PyErr_Occurred() ? -1 : 0;
    *result = (int)PyLong_AsLong(PyTuple_GET_ITEM(v, 0));
    *code = (int)PyLong_AsLong(PyTuple_GET_ITEM(v, 1));
    if (pop && PyDict_DelItem(self->ended, id))
        return -1;
    return 1;
}

/* ended_find for a caller whose batch_find just failed: the pending
 * exception (ValueError "unknown batch id") is set aside for the lookup
 * (the C API must not run with one set) and restored when the id is not
 * among the results either; found, it is dropped. */
static int ended_find_after_miss(EngineObject *self, PyObject *id, int pop, int *result, int *code)
{
    PyObject *type, *value, *trace;
    PyErr_Fetch(&type, &value, &trace);
    int found = ended_find(self, id, pop, result, code);
    if (found == 0) {
        PyErr_Restore(type, value, trace);
        return 0;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(trace);
    return found;
}

struct pybatch **batches_detach(EngineObject *self, size_t *count)
{
    *count = 0;
    if (!self->batches)
        return NULL;
    Py_ssize_t n = PyDict_Size(self->batches), pos = 0;
    struct pybatch **out = PyMem_Malloc(((size_t)n + 1) * sizeof *out);
    if (!out)
        return NULL; /* leaks the batches rather than freeing them under a running request */
    PyObject *key, *cap;
    while (PyDict_Next(self->batches, &pos, &key, &cap))
        out[(*count)++] = PyCapsule_GetPointer(cap, "ferry.batch");
    PyDict_Clear(self->batches);
    PyDict_Clear(self->ended);
    return out;
}

void pybatch_free_nogil(struct pybatch *b)
{
    ferry_batch_free(b->batch);
    b->batch = NULL;
}

void pybatch_release_refs(struct pybatch *b)
{
    struct req_array a = {NULL, b->n, b->refs};
    req_array_release(&a);
    PyMem_Free(b);
}

/* A batch taken out of the table (batch_find(..., 1)) is freed here, with
 * the GIL held, unless wait_batch calls are still waiting on it in other
 * threads: the last of them frees it when it returns. */
void pybatch_collect(struct pybatch *b)
{
    if (b->waiters) {
        b->collected = 1;
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    pybatch_free_nogil(b);
    Py_END_ALLOW_THREADS
    pybatch_release_refs(b);
}

/* ---------------------------------------------------------------- collecting */

/* Waits for a list of batches and frees them.  Returns 0 if every request
 * completed, else the first failure's negative code. */
/* ids as a sequence: one id (an int) or a sequence of them.  A str, bytes or
 * bytearray is neither, though it iterates: its characters (bytes: small
 * ints) would be taken for ids. */
static PyObject *batch_id_list(PyObject *ids)
{
    if (PyLong_Check(ids))
        return PyTuple_Pack(1, ids);
    if (!PyUnicode_Check(ids) && !PyBytes_Check(ids) && !PyByteArray_Check(ids)) {
        PyObject *seq = PySequence_Fast(ids, "batch_ids must be a list of ints");
        if (seq || !PyErr_ExceptionMatches(PyExc_TypeError))
            return seq;
        PyErr_Clear();
    }
    return PyErr_Format(PyExc_TypeError, "batch_ids must be a list of ints, not %.80s", Py_TYPE(ids)->tp_name);
}

static PyObject *T_get_batch_transfer_status(EngineObject *self, PyObject *ids)
{
    PyObject *seq = batch_id_list(ids);
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct pybatch **bs = PyMem_Calloc((size_t)n + 1, sizeof *bs);
    PyObject *result = NULL;
    if (!bs) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    if (engine_enter(self))
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) { /* validate every id before collecting any */
        PyObject *id = PySequence_Fast_GET_ITEM(seq, i);
        if (batch_find(self, id, 0))
            continue;
        PyObject *t, *v, *tb;
        int result, code, ended;
        PyErr_Fetch(&t, &v, &tb);
        if ((ended = ended_find(self, id, 0, &result, &code)) == 1) { /* transfer_check_status saw it end */
            Py_XDECREF(t), Py_XDECREF(v), Py_XDECREF(tb);
            continue;
        }
        if (ended == 0)
            PyErr_Restore(t, v, tb);
        else
            Py_XDECREF(t), Py_XDECREF(v), Py_XDECREF(tb);
        engine_leave(self);
        goto out;
    }
    Py_ssize_t got = 0;
    struct outcome o = {0};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *id = PySequence_Fast_GET_ITEM(seq, i);
        struct pybatch *b = batch_find(self, id, 1);
        int result, code;
        if (b) {
            bs[got++] = b;
            continue;
        }
        PyErr_Clear(); /* an ended one, or the same id twice */
        if (ended_find(self, id, 1, &result, &code) == 1 && code && !o.rc) {
            o.rc = code;
            o.stage = STAGE_WAIT;
            snprintf(o.why, sizeof o.why, "batch %llu ended earlier (transfer_check_status %d): %s",
                     PyLong_AsUnsignedLongLong(id), result, ferry_strerror(code));
        }
        PyErr_Clear();
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < got; i++) {
        int rc = ferry_batch_wait(bs[i]->batch, -1);
        if (rc && !o.rc)
            outcome_fail(&o, rc, STAGE_WAIT);
    }
    Py_END_ALLOW_THREADS
    outcome_closing(self, &o);
    Py_ssize_t nfree = 0;
    for (Py_ssize_t i = 0; i < got; i++) { /* a batch a wait_batch still waits on: that one frees it */
        if (bs[i]->waiters)
            bs[i]->collected = 1;
        else
            bs[nfree++] = bs[i];
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nfree; i++)
        pybatch_free_nogil(bs[i]);
    Py_END_ALLOW_THREADS
    engine_leave(self);
    for (Py_ssize_t i = 0; i < nfree; i++)
        pybatch_release_refs(bs[i]);
    result = outcome_result(&o);
out:
    PyMem_Free(bs);
    Py_DECREF(seq);
    return result;
}

static const char *state_name(int state)
{
    switch (state) {
    case FERRY_PENDING: return "PENDING";
    case FERRY_COMPLETED: return "COMPLETED";
    case FERRY_FAILED: return "FAILED";
    case FERRY_TIMEOUT: return "TIMEOUT";
    default: return "UNUSED";
    }
}

static PyObject *status_tuple(const struct ferry_status *st)
{
    PyObject *t = PyStructSequence_New(RequestStatus_Type);
    if (!t)
        return NULL;
    PyObject *v[5] = {PyUnicode_FromString(state_name(st->state)), PyLong_FromLong(st->error),
                      PyUnicode_FromString(ferry_err_name(st->error)),
                      PyUnicode_DecodeUTF8(st->message, (Py_ssize_t)strnlen(st->message, sizeof st->message),
                                           "replace"),
                      PyLong_FromUnsignedLongLong(st->transferred)};
    for (int i = 0; i < 5; i++) {
        if (!v[i]) {
            for (int j = i; j < 5; j++)
                Py_XDECREF(v[j]);
            Py_DECREF(t);
            return NULL;
        }
        PyStructSequence_SetItem(t, i, v[i]);
    }
    return t;
}

static PyObject *T_batch_status(EngineObject *self, PyObject *id)
{
    if (engine_enter(self))
        return NULL;
    struct pybatch *b = batch_find(self, id, 0);
    PyObject *list = b ? PyList_New((Py_ssize_t)b->n) : NULL;
    for (size_t i = 0; list && i < b->n; i++) {
        struct ferry_status st;
        memset(&st, 0, sizeof st);
        ferry_batch_status(b->batch, i, &st);
        PyObject *t = status_tuple(&st);
        if (!t)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    engine_leave(self);
    return list;
}

/* The reference's poll: 1 completed, 0 running, -1 failed, -2 timed out.
 * A batch that ended is collected and its result kept (self->ended): later
 * calls return it again, as the reference's do for a timed-out batch. */
static PyObject *T_transfer_check_status(EngineObject *self, PyObject *id)
{
    if (engine_enter(self))
        return NULL;
    struct pybatch *b = batch_find(self, id, 0);
    if (!b) {
        PyObject *t, *v, *tb;
        int result, code, ended;
        PyErr_Fetch(&t, &v, &tb);
        if ((ended = ended_find(self, id, 0, &result, &code)) == 1) {
            Py_XDECREF(t), Py_XDECREF(v), Py_XDECREF(tb);
            engine_leave(self);
            if (code)
                note_failure(code, "the batch ended earlier (transfer_check_status said so before)");
            return PyLong_FromLong(result);
        }
        if (ended == 0)
            PyErr_Restore(t, v, tb);
        else
            Py_XDECREF(t), Py_XDECREF(v), Py_XDECREF(tb);
        engine_leave(self);
        return NULL;
    }
    int pending = 0, failed = 0, timeout = 0;
    struct ferry_status st;
    for (size_t i = 0; i < b->n; i++) {
        ferry_batch_status(b->batch, i, &st);
        pending |= st.state == FERRY_PENDING;
        failed |= st.state == FERRY_FAILED;
        timeout |= st.state == FERRY_TIMEOUT;
    }
    int result = 0, code = 0;
    if (!pending) { /* every request ended; a notification may still be on its way */
        int rc = ferry_batch_wait(b->batch, 0);
        if (failed || timeout)
            result = failed ? -1 : -2;
        else if (rc == 0)
            result = 1;
        else if (rc != FERRY_ETIMEDOUT)
            result = -1;
        if (result && rc)
            note_failure(rc, NULL);
        code = result == 1 ? 0 : rc;
    }
    if (result && ended_remember(self, id, result, code)) {
        engine_leave(self);
        return NULL;
    }
    if (result && (b = batch_find(self, id, 1)) != NULL)
        pybatch_collect(b);
    engine_leave(self);
    return PyLong_FromLong(result);
}

static PyObject *T_wait_batch(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"batch_id", "timeout_ms", NULL};
    PyObject *a[2];
    long timeout = -1;
    if (parse_args("wait_batch", args, nargs, kw, names, 1, a))
        return NULL;
    if (a[1] && a[1] != Py_None) {
        timeout = PyLong_AsLong(a[1]);
        if (timeout == -1 && PyErr_Occurred())
            return NULL;
        if (timeout < -1 || timeout > 0x7fffffff) {
            PyErr_Format(PyExc_ValueError, "timeout_ms must be -1 (no limit) or 0 .. 2**31-1, got %ld", timeout);
            return NULL;
        }
    }
    if (engine_enter(self))
        return NULL;
    struct pybatch *b = batch_find(self, a[0], 0);
    int result, code;
    if (!b && PyErr_ExceptionMatches(PyExc_ValueError) && ended_find_after_miss(self, a[0], 0, &result, &code) == 1) {
        engine_leave(self); /* transfer_check_status saw it end: its outcome */
        struct outcome o = {code, STAGE_WAIT, "the batch ended earlier (transfer_check_status)"};
        return outcome_result(&o);
    }
    if (!b) {
        engine_leave(self);
        return NULL;
    }
    /* another thread may collect the batch meanwhile (get_batch_transfer_status,
     * transfer_check_status, free_batch): it leaves the freeing to this one */
    ferry_batch *fb = b->batch;
    b->waiters++;
    struct outcome o = {0};
    Py_BEGIN_ALLOW_THREADS
    int rc = ferry_batch_wait(fb, (int)timeout);
    if (rc)
        outcome_fail(&o, rc, STAGE_WAIT);
    Py_END_ALLOW_THREADS
    outcome_closing(self, &o);
    if (--b->waiters == 0 && b->collected) {
        b->collected = 0;
        pybatch_collect(b);
    }
    engine_leave(self);
    return outcome_result(&o);
}

static PyObject *T_free_batch(EngineObject *self, PyObject *id)
{
    if (engine_enter(self))
        return NULL;
    struct pybatch *b = batch_find(self, id, 1);
    int result, code, ended = 0;
    if (b)
        pybatch_collect(b);
    else if (PyErr_ExceptionMatches(PyExc_ValueError))
        ended = ended_find_after_miss(self, id, 1, &result, &code); /* an ended batch's kept result: forgotten */
    engine_leave(self);
    if (!b && ended != 1)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *T_pending_batches(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    return PyDict_Keys(self->batches);
}

/* ---------------------------------------------------------------- table */

COMPAT_O(T_get_batch_transfer_status, 0)
COMPAT_O(T_transfer_check_status, 0)
/* batch_status is ferry's own; as free_batch, the compat class answers an
 * unknown or collected id with a negative code (FERRY_EINVAL naming it),
 * not the ValueError a caller of the reference's conventions never catches */
COMPAT_O(T_batch_status, 0)
COMPAT_FASTKW(T_wait_batch, 0)

/* free_batch is ferry's own; the compat class answers as its other calls do
 * (0, or a negative code for an id that is unknown or collected already)
 * instead of None or ValueError, which a caller of the reference's
 * conventions does not catch. */
static PyObject *compat_T_free_batch(EngineObject *self, PyObject *id)
{
    PyObject *r = T_free_batch(self, id);
    if (r && !self->strict) {
        Py_DECREF(r);
        return PyLong_FromLong(0);
    }
    return compat_result(self, r, 0);
}

PyMethodDef batch_methods[] = {
    M("get_batch_transfer_status", compat_T_get_batch_transfer_status, METH_O,
      "get_batch_transfer_status(batch_ids) -> int\n\n"
      "Waits (GIL released) for every batch in the list, frees them, and returns 0 if all\n"
      "requests completed, else the first failure's negative FERRY_E* code.  Raises ValueError\n"
      "for an unknown id (nothing is collected then)."),
    M("transfer_check_status", compat_T_transfer_check_status, METH_O,
      "transfer_check_status(batch_id) -> 1 completed, 0 running, -1 failed, -2 timed out.\n"
      "Non-blocking.  A batch that ended is freed; later calls return the same result (as the\n"
      "reference does for a timed-out batch) until get_batch_transfer_status([id]) or\n"
      "free_batch(id) takes the id (the newest 4096 such results are kept)."),
    M("batch_status", compat_T_batch_status, METH_O,
      "batch_status(batch_id) -> [RequestStatus(state, error, error_name, message, transferred)]\n"
      "per request, in submit order; non-blocking; the batch stays.  FERRY_EINVAL for an id that\n"
      "is unknown or was collected already.  Strict: ValueError for such an id."),
    M("wait_batch", compat_T_wait_batch, FASTKW,
      "wait_batch(batch_id, timeout_ms=-1) -> 0 or a negative code (FERRY_ETIMEDOUT when the wait\n"
      "ran out; the batch goes on).  The batch stays; free it with free_batch."),
    M("free_batch", compat_T_free_batch, METH_O,
      "free_batch(batch_id) -> 0: waits for its requests to end and releases its buffers; FERRY_EINVAL\n"
      "for an id that is unknown or was collected already.  Strict: None, and ValueError for such an id."),
    M("pending_batches", T_pending_batches, METH_NOARGS, "pending_batches() -> [batch ids not yet collected]"),
    {NULL, NULL, 0, NULL},
};
