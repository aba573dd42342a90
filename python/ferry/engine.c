/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine.c — the TransferEngine type: lifecycle (initialize, close), segments,
 * notifications and stats.  Memory registration and managed buffers are in
 * memory.c, transfers in transfer.c.
 *
 * Threads: any Python thread may call any method.  Every call that reaches
 * ferry holds the read side of self->life; close() and dealloc take the write
 * side (with the GIL released) so the engine is never destroyed under a call
 * that is still inside ferry.  Blocking ferry calls run with the GIL released.
 */
#include "pyferry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MANAGED_POOL (256u << 20)

/* ---------------------------------------------------------------- life */

/* Waits (GIL released) until the initialize() another thread is running
 * has ended: a caller that shares the object before initialize() returns
 * (a worker pool's double-checked locking) gets the new engine, not "not
 * initialized".  GIL held on entry and exit. */
static void wait_for_initialize(EngineObject *self)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->init_lock);
    while (self->initializing)
        pthread_cond_wait(&self->init_done, &self->init_lock);
    pthread_mutex_unlock(&self->init_lock);
    Py_END_ALLOW_THREADS
}

static void set_initializing(EngineObject *self, int on)
{
    pthread_mutex_lock(&self->init_lock); /* never held with a wait for the GIL */
    self->initializing = on;
    if (!on)
        pthread_cond_broadcast(&self->init_done);
    pthread_mutex_unlock(&self->init_lock);
}

int engine_enter(EngineObject *self)
{
    if (self->initializing && !self->engine)
        wait_for_initialize(self);
    /* close() or initialize() waits for the write side: new calls stay out,
     * or threads calling in a loop would keep it waiting for ever (glibc's
     * rwlock lets readers in ahead of a waiting writer).  Checked and set
     * with the GIL held. */
    if (self->life_writer) {
        raise_ferry(FERRY_EINVAL, "the engine is being closed or initialized by another thread");
        return -1;
    }
    /* close() holds the write side while it destroys the engine (which may
     * wait on a metadata store or a peer): wait for it without the GIL, so
     * the interpreter's other threads run meanwhile.  Nobody waits for the
     * write side with the GIL held, so holding the read side while taking
     * the GIL back cannot deadlock. */
    if (pthread_rwlock_tryrdlock(&self->life) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_rwlock_rdlock(&self->life);
        Py_END_ALLOW_THREADS
    }
    if (self->engine)
        return 0;
    pthread_rwlock_unlock(&self->life);
    raise_ferry(FERRY_EINVAL, self->closed ? "the engine is closed" : "the engine is not initialized: call initialize() first");
    return -1;
}

void engine_leave(EngineObject *self)
{
    pthread_rwlock_unlock(&self->life);
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args, (void)kw;
    EngineObject *self = (EngineObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_rwlock_init(&self->life, NULL);
    pthread_mutex_init(&self->slab_lock, NULL);
    pthread_mutex_init(&self->init_lock, NULL);
    pthread_cond_init(&self->init_done, NULL);
    self->segments = PyDict_New();
    self->batches = PyDict_New();
    self->ended = PyDict_New();
    self->regs = PyDict_New();
    self->stream_batches = PyList_New(0);
    self->next_batch_id = 1;
    self->managed_pool_size = DEFAULT_MANAGED_POOL;
    if (!self->segments || !self->batches || !self->ended || !self->regs || !self->stream_batches) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"managed_pool_size", "strict", NULL};
    PyObject *pool = NULL;
    int strict = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Op:TransferEngine", kwlist, &pool, &strict))
        return -1;
    self->strict = strict;
    if (pool && pool != Py_None) {
        uint64_t v;
        if (to_u64(pool, "managed_pool_size", &v))
            return -1;
        if (v < (1u << SLAB_MAX_SHIFT) || v > MAX_LENGTH) {
            PyErr_Format(PyExc_ValueError, "managed_pool_size must be 16 MiB .. 2**47, got %llu",
                         (unsigned long long)v);
            return -1;
        }
        self->managed_pool_size = (size_t)v;
    }
    return 0;
}

/* Ends now the requests that calls of other threads wait on: close() must
 * wait until those calls leave (they hold the read side of `life`), and a
 * call waiting on a hung peer would leave only at its deadline
 * (request_timeout_ms, 30 s by default).  Closing every segment this
 * object opened fails their requests with FERRY_ECANCELED at once; the
 * calls then return.  GIL held; released while closing. */
static void cancel_calls_in_flight(EngineObject *self)
{
    Py_ssize_t n = self->segments ? PyDict_Size(self->segments) : 0, pos = 0, k = 0;
    ferry_segment_t *handles = n > 0 ? PyMem_Malloc((size_t)n * sizeof *handles) : NULL;
    if (!handles)
        return; /* nothing opened, or out of memory: the calls end at their deadlines */
    PyObject *name, *h;
    while (PyDict_Next(self->segments, &pos, &name, &h) && k < n)
        handles[k++] = PyLong_AsUnsignedLongLong(h);
    PyErr_Clear();
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_rdlock(&self->life); /* the engine stays while we use it */
    for (Py_ssize_t i = 0; self->engine && i < k; i++)
        ferry_close_segment(self->engine, handles[i]);
    pthread_rwlock_unlock(&self->life);
    Py_END_ALLOW_THREADS
    PyMem_Free(handles);
}

/* Destroys the ferry engine and everything that depends on it.  GIL held on
 * entry and exit; released while waiting for calls in flight and batches. */
static void engine_shutdown(EngineObject *self)
{
    size_t nb = 0;
    struct pybatch **bs = batches_detach(self, &nb);
    self->life_writer++; /* turns new calls away (engine_enter) */
    cancel_calls_in_flight(self);
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_wrlock(&self->life);
    ferry_engine *e = self->engine;
    struct slab *slab = self->slab;
    self->engine = NULL;
    self->slab = NULL;
    if (e)
        self->closed = 1;
    ferry_engine_destroy(e); /* fails whatever is still running with ECANCELED */
    for (size_t i = 0; i < nb; i++)
        pybatch_free_nogil(bs[i]);
    slab_destroy(slab);
    pthread_rwlock_unlock(&self->life);
    Py_END_ALLOW_THREADS
    self->life_writer--;
    for (size_t i = 0; i < nb; i++)
        pybatch_release_refs(bs[i]);
    PyMem_Free(bs);
    if (self->regs)
        PyDict_Clear(self->regs);
    if (self->segments)
        PyDict_Clear(self->segments);
    if (self->stream_batches)
        PyList_SetSlice(self->stream_batches, 0, PY_SSIZE_T_MAX, NULL);
}

static void Engine_dealloc(EngineObject *self)
{
    if (self->batches) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        engine_shutdown(self);
        PyErr_Restore(t, v, tb);
    }
    Py_CLEAR(self->segments);
    Py_CLEAR(self->batches);
    Py_CLEAR(self->ended);
    Py_CLEAR(self->regs);
    Py_CLEAR(self->stream_batches);
    pthread_rwlock_destroy(&self->life);
    pthread_mutex_destroy(&self->slab_lock);
    pthread_mutex_destroy(&self->init_lock);
    pthread_cond_destroy(&self->init_done);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_close(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    self->closes++;
    engine_shutdown(self);
    Py_RETURN_NONE;
}

static PyObject *Engine_enter_ctx(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *Engine_exit_ctx(EngineObject *self, PyObject *args)
{
    (void)args;
    self->closes++;
    engine_shutdown(self);
    Py_RETURN_FALSE;
}

/* ---------------------------------------------------------------- initialize */

enum knob_kind { K_STR, K_UINT, K_SIZE, K_INT };
struct config_kwarg {
    const char *name;
    enum knob_kind kind;
    size_t offset;
};
#define KW(f, k) {#f, k, offsetof(struct ferry_config, f)}
static const struct config_kwarg config_kwargs[] = {
    KW(metadata_prefix, K_STR),     KW(metadata_ttl_s, K_UINT),     KW(tcp_connections, K_UINT),
    KW(slice_size, K_SIZE),         KW(coalesce_max, K_UINT),       KW(request_timeout_ms, K_UINT),
    KW(connect_timeout_ms, K_UINT), KW(staging_chunk_size, K_SIZE), KW(staging_chunks, K_UINT),
    KW(notify_queue_max, K_UINT),   KW(log_level, K_INT),
};

static int apply_kwarg(struct ferry_config *cfg, PyObject *key, PyObject *value)
{
    for (size_t i = 0; i < sizeof config_kwargs / sizeof config_kwargs[0]; i++) {
        const struct config_kwarg *k = &config_kwargs[i];
        if (PyUnicode_CompareWithASCIIString(key, k->name) != 0)
            continue;
        char *field = (char *)cfg + k->offset;
        if (k->kind == K_STR) {
            if (!PyUnicode_Check(value)) {
                PyErr_Format(PyExc_TypeError, "%s must be a str", k->name);
                return -1;
            }
            const char *s = PyUnicode_AsUTF8(value); /* lives as long as the kwargs dict */
            if (!s)
                return -1;
            *(const char **)field = s;
            return 0;
        }
        if (k->kind == K_INT) {
            long v = PyLong_AsLong(value);
            if (v == -1 && PyErr_Occurred())
                return -1;
            *(int *)field = (int)v;
            return 0;
        }
        uint64_t v;
        if (to_u64(value, k->name, &v))
            return -1;
        if (k->kind == K_UINT) {
            if (v > 0xffffffffu) {
                PyErr_Format(PyExc_ValueError, "%s %llu is too large", k->name, (unsigned long long)v);
                return -1;
            }
            *(unsigned *)field = (unsigned)v;
        } else {
            *(size_t *)field = (size_t)v;
        }
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "initialize() got an unexpected keyword argument '%U'", key);
    return -1;
}

const char *opt_str(PyObject *o, const char *what, int *err)
{
    if (!o || o == Py_None)
        return NULL;
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.80s", what, Py_TYPE(o)->tp_name);
        *err = 1;
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8(o);
    if (!s)
        *err = 1;
    return s && *s ? s : NULL;
}

/* Destroys the engine the object holds, if any (the reference replaces its
 * engine with a new one), and creates one from cfg.  Returns 0 or the
 * negative code of the creation (noted for ferry.last_error()).  GIL held;
 * released while destroying and creating.  The caller set initializing. */
static int replace_engine(EngineObject *self, const struct ferry_config *cfg)
{
    if (self->engine || self->closed) {
        engine_shutdown(self);
        self->closed = 0;
    }
    ferry_engine *e = NULL;
    char why[512] = "";
    unsigned closes = self->closes;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ferry_engine_create(cfg, &e);
    if (rc)
        snprintf(why, sizeof why, "%s", ferry_last_error());
    Py_END_ALLOW_THREADS
    if (rc) {
        note_failure(rc, why);
        return rc;
    }
    if (self->closes != closes) { /* close() returned meanwhile: the object stays closed */
        Py_BEGIN_ALLOW_THREADS
        ferry_engine_destroy(e);
        Py_END_ALLOW_THREADS
        self->closed = 1;
        note_failure(FERRY_ECANCELED, "initialize: close() was called while the engine was being created");
        return FERRY_ECANCELED;
    }
    self->life_writer++;
    Py_BEGIN_ALLOW_THREADS /* a thread in engine_enter may hold the read side waiting for the GIL */
    pthread_rwlock_wrlock(&self->life);
    self->engine = e;
    pthread_rwlock_unlock(&self->life);
    Py_END_ALLOW_THREADS
    self->life_writer--;
    return 0;
}

static PyObject *Engine_initialize(EngineObject *self, PyObject *args, PyObject *kw)
{
    PyObject *host = NULL, *meta = NULL, *proto = NULL, *dev = NULL;
    if (!PyArg_UnpackTuple(args, "initialize", 1, 4, &host, &meta, &proto, &dev))
        return NULL;
    struct ferry_config cfg;
    int rc = ferry_config_init(&cfg), err = 0;
    const char *h = opt_str(host, "local_hostname", &err), *m = opt_str(meta, "metadata_server", &err);
    const char *p = opt_str(proto, "protocol", &err), *d = opt_str(dev, "device_name", &err);
    if (err)
        return NULL;
    if (kw) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(kw, &pos, &key, &value))
            if (apply_kwarg(&cfg, key, value))
                return NULL;
    }
    if (rc) {
        note_failure(rc, NULL);
        return PyLong_FromLong(rc);
    }
    /* the reference reads "host:port" without a scheme as an etcd address */
    char meta_url[512], seg_name[256];
    if (m && strcmp(m, "P2PHANDSHAKE") != 0 && !strstr(m, "://")) {
        snprintf(meta_url, sizeof meta_url, "etcd://%s", m);
        m = meta_url;
    }
    if (h)
        cfg.local_server_name = h;
    if (h && !self->strict) { /* with a metadata store the reference publishes local_hostname as given */
        snprintf(seg_name, sizeof seg_name, "%s", h);
        char *npu = strstr(seg_name, ":npu_");
        if (npu)
            *npu = '\0';
        cfg.segment_name = seg_name;
    }
    if (m)
        cfg.metadata_server = m;
    if (p && !getenv("MC_FORCE_TCP")) /* the reference's MC_FORCE_TCP overrides the protocol argument */
        cfg.protocols = p;
    if (d)
        cfg.device_name = d;
    if ((self->engine || self->closed) && self->strict) {
        note_failure(FERRY_EBUSY, self->closed ? "initialize: the engine was closed; create a new one"
                                               : "initialize: the engine is already initialized");
        return PyLong_FromLong(FERRY_EBUSY);
    }
    /* Both would create an engine with the GIL released and the one stored
     * last would win: the other would live on, unreachable, with its
     * listener, threads and published descriptor. */
    if (self->initializing) {
        note_failure(FERRY_EBUSY, "initialize: another thread is initializing this engine now");
        return PyLong_FromLong(FERRY_EBUSY);
    }
    set_initializing(self, 1);
    rc = replace_engine(self, &cfg);
    set_initializing(self, 0);
    return PyLong_FromLong(rc);
}

static PyObject *Engine_get_rpc_port(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    if (engine_enter(self))
        return NULL;
    int port = ferry_engine_handshake_port(self->engine);
    engine_leave(self);
    return PyLong_FromLong(port);
}

static PyObject *Engine_segment_name(EngineObject *self, void *closure)
{
    (void)closure;
    if (engine_enter(self))
        return NULL;
    PyObject *r = PyUnicode_FromString(ferry_engine_segment_name(self->engine));
    engine_leave(self);
    return r;
}

static PyObject *Engine_initialized(EngineObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->engine != NULL);
}

static PyObject *Engine_strict(EngineObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->strict);
}

/* ---------------------------------------------------------------- segments */

int segment_lookup(EngineObject *self, PyObject *name, ferry_segment_t *out)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "target_hostname must be a str, not %.80s", Py_TYPE(name)->tp_name);
        return -1;
    }
    PyObject *h = PyDict_GetItemWithError(self->segments, name);
    if (h) {
        *out = PyLong_AsUnsignedLongLong(h);
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    const char *s = PyUnicode_AsUTF8(name);
    if (!s)
        return -1;
    int rc;
    ferry_segment_t seg = 0;
    char why[512] = "";
    Py_BEGIN_ALLOW_THREADS
    rc = ferry_open_segment(self->engine, s, &seg);
    if (rc)
        snprintf(why, sizeof why, "%s", ferry_last_error());
    Py_END_ALLOW_THREADS
    if (rc) {
        raise_ferry(rc, why);
        return -1;
    }
    PyObject *v = PyLong_FromUnsignedLongLong(seg);
    if (!v || PyDict_SetItem(self->segments, name, v)) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    *out = seg;
    return 0;
}

static PyObject *segment_buffers(EngineObject *self, PyObject *name, int first_only)
{
    ferry_segment_t seg;
    if (engine_enter(self))
        return NULL;
    if (segment_lookup(self, name, &seg)) {
        engine_leave(self);
        return NULL;
    }
    size_t count = 0, cap = 16;
    struct ferry_buffer_info *info = NULL;
    int rc;
    for (;;) {
        info = PyMem_Realloc(info, cap * sizeof *info);
        if (!info) {
            engine_leave(self);
            return PyErr_NoMemory();
        }
        ferry_engine *e = self->engine;
        Py_BEGIN_ALLOW_THREADS /* takes the engine's segment and registry locks */
        rc = ferry_segment_buffers(e, seg, info, cap, &count);
        Py_END_ALLOW_THREADS
        if (rc || count <= cap || first_only)
            break;
        cap = count;
    }
    engine_leave(self);
    PyObject *r = NULL;
    if (rc) {
        raise_ferry(rc, NULL);
    } else if (first_only) {
        r = PyLong_FromUnsignedLongLong(count ? info[0].addr : 0);
    } else if ((r = PyList_New((Py_ssize_t)count))) {
        for (size_t i = 0; i < count; i++) {
            PyObject *t = Py_BuildValue("(KKs)", (unsigned long long)info[i].addr, (unsigned long long)info[i].len,
                                        info[i].location);
            if (!t) {
                Py_CLEAR(r);
                break;
            }
            PyList_SET_ITEM(r, (Py_ssize_t)i, t);
        }
    }
    PyMem_Free(info);
    return r;
}

static PyObject *Engine_get_first_buffer_address(EngineObject *self, PyObject *name)
{
    return segment_buffers(self, name, 1);
}

static PyObject *Engine_get_segment_buffers(EngineObject *self, PyObject *name)
{
    return segment_buffers(self, name, 0);
}

/* ---------------------------------------------------------------- notifications, stats */

static PyObject *Engine_get_notifications(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    enum { CHUNK = 32 };
    struct ferry_notification *buf = PyMem_Malloc(CHUNK * sizeof *buf);
    PyObject *list = PyList_New(0);
    if (!buf || !list) {
        PyMem_Free(buf);
        Py_XDECREF(list);
        return PyErr_NoMemory();
    }
    if (engine_enter(self)) {
        PyMem_Free(buf);
        Py_DECREF(list);
        return NULL;
    }
    size_t got;
    do {
        got = 0;
        ferry_get_notifications(self->engine, buf, CHUNK, &got);
        for (size_t i = 0; i < got && list; i++) {
            PyObject *n = PyStructSequence_New(Notification_Type);
            PyObject *from = PyUnicode_DecodeUTF8(buf[i].from, (Py_ssize_t)strnlen(buf[i].from, sizeof buf[i].from),
                                                  "replace");
            PyObject *msg = PyBytes_FromStringAndSize((const char *)buf[i].msg, (Py_ssize_t)buf[i].len);
            if (!n || !from || !msg) {
                Py_XDECREF(from);
                Py_XDECREF(msg);
                Py_CLEAR(list);
            } else {
                PyStructSequence_SetItem(n, 0, from); /* steals */
                PyStructSequence_SetItem(n, 1, msg);
                if (PyList_Append(list, n))
                    Py_CLEAR(list);
            }
            Py_XDECREF(n);
        }
    } while (got == CHUNK && list);
    engine_leave(self);
    PyMem_Free(buf);
    return list;
}

/* The engine's stats now (zero where it reports nothing); -1 with the
 * Python error set when the engine cannot be entered. */
static int stats_now(EngineObject *self, struct ferry_stats *st)
{
    if (engine_enter(self))
        return -1;
    memset(st, 0, sizeof *st);
    ferry_get_stats(self->engine, st);
    engine_leave(self);
    return 0;
}

static PyObject *Engine_get_stats(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    struct ferry_stats st;
    if (stats_now(self, &st))
        return NULL;
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < st.transport_count && i < sizeof st.transports / sizeof st.transports[0]; i++) {
        const struct ferry_transport_stats *t = &st.transports[i];
        PyObject *row = Py_BuildValue(
            "{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "bytes_written", (unsigned long long)t->bytes_written,
            "bytes_read", (unsigned long long)t->bytes_read, "bytes_served", (unsigned long long)t->bytes_served,
            "requests_completed", (unsigned long long)t->requests_completed, "requests_failed",
            (unsigned long long)t->requests_failed, "frames_sent", (unsigned long long)t->frames_sent, "refused",
            (unsigned long long)t->refused, "bytes_staged", (unsigned long long)t->bytes_staged, "bytes_bounced",
            (unsigned long long)t->bytes_bounced, "bytes_target_staged", (unsigned long long)t->bytes_target_staged);
        /* "nics": {name: bytes} for the transports that use NICs (rdma), else {} */
        PyObject *nics = row ? PyDict_New() : NULL;
        for (size_t k = 0; nics && k < t->nic_count && k < FERRY_STATS_MAX_NICS; k++) {
            PyObject *v = PyLong_FromUnsignedLongLong(t->nics[k].bytes);
            char name[sizeof t->nics[k].name + 1];
            snprintf(name, sizeof name, "%.*s", (int)sizeof t->nics[k].name, t->nics[k].name);
            if (!v || PyDict_SetItemString(nics, name, v))
                Py_CLEAR(nics);
            Py_XDECREF(v);
        }
        if (!nics || PyDict_SetItemString(row, "nics", nics))
            Py_CLEAR(row);
        Py_XDECREF(nics);
        if (!row || PyDict_SetItemString(d, t->name, row))
            Py_CLEAR(d);
        Py_XDECREF(row);
    }
    return d;
}

/* ---------------------------------------------------------------- reference extras */

static PyObject *Engine_send_probe(EngineObject *self, PyObject *name)
{
    if (!PyUnicode_Check(name))
        return PyErr_Format(PyExc_TypeError, "peer_server_name must be a str, not %.80s", Py_TYPE(name)->tp_name);
    const char *s = PyUnicode_AsUTF8(name);
    if (!s || engine_enter(self))
        return NULL;
    int rc;
    char why[512] = "";
    Py_BEGIN_ALLOW_THREADS
    rc = ferry_probe_segment(self->engine, s);
    if (rc)
        snprintf(why, sizeof why, "%s", ferry_last_error());
    Py_END_ALLOW_THREADS
    engine_leave(self);
    if (rc)
        note_failure(rc, why);
    return PyLong_FromLong(rc);
}

static PyObject *Engine_warmup_efa_segment(EngineObject *self, PyObject *name)
{
    ferry_segment_t seg;
    if (engine_enter(self))
        return NULL;
    int rc = segment_lookup(self, name, &seg);
    engine_leave(self);
    return rc ? NULL : PyLong_FromLong(0);
}

static PyObject *Engine_get_engine(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    if (engine_enter(self))
        return NULL;
    PyObject *cap = PyCapsule_New(self->engine, "ferry_engine", NULL);
    engine_leave(self);
    return cap;
}

static PyObject *Engine_get_engine_ptr(EngineObject *self, PyObject *noargs)
{
    (void)noargs;
    if (engine_enter(self))
        return NULL;
    PyObject *r = PyLong_FromVoidPtr(self->engine);
    engine_leave(self);
    return r;
}

static PyObject *Engine_transports(EngineObject *self, void *closure)
{
    (void)closure;
    struct ferry_stats st;
    if (stats_now(self, &st))
        return NULL;
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list && i < st.transport_count; i++) {
        PyObject *n = PyUnicode_FromString(st.transports[i].name);
        if (!n || PyList_Append(list, n))
            Py_CLEAR(list);
        Py_XDECREF(n);
    }
    return list;
}

COMPAT_O(Engine_get_first_buffer_address, 1)
COMPAT_O(Engine_send_probe, 0)
COMPAT_O(Engine_warmup_efa_segment, 0)

static PyObject *compat_Engine_get_rpc_port(EngineObject *self, PyObject *noargs)
{
    return compat_result(self, Engine_get_rpc_port(self, noargs), 0);
}

/* ---------------------------------------------------------------- type */

static PyMethodDef engine_methods[] = {
    {"initialize", (PyCFunction)(void (*)(void))Engine_initialize, METH_VARARGS | METH_KEYWORDS,
     "initialize(local_hostname, metadata_server='P2PHANDSHAKE', protocol='tcp', device_name='', **config) -> int\n\n"
     "Creates the engine.  local_hostname is 'host' or 'host:port' (a taken or absent port picks a\n"
     "free one); metadata_server 'P2PHANDSHAKE', 'etcd://h:p', 'redis://h:p' (a bare 'h:p' means etcd).\n"
     "config: metadata_prefix, metadata_ttl_s, tcp_connections, slice_size, coalesce_max,\n"
     "request_timeout_ms, connect_timeout_ms, staging_chunk_size, staging_chunks, notify_queue_max,\n"
     "log_level.  Returns 0, or a negative FERRY_E* code (ferry.last_error() says why); FERRY_EBUSY\n"
     "while another thread's initialize() of this object runs; FERRY_ECANCELED when close() was\n"
     "called meanwhile.  A second initialize() replaces the engine (strict: FERRY_EBUSY)."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS,
     "close() -> None: destroys the engine; unfinished requests end ECANCELED.  Idempotent."},
    {"__enter__", (PyCFunction)Engine_enter_ctx, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Engine_exit_ctx, METH_VARARGS, NULL},
    {"get_rpc_port", (PyCFunction)compat_Engine_get_rpc_port, METH_NOARGS,
     "get_rpc_port() -> int: the port of this engine's handshake listener."},
    {"get_first_buffer_address", (PyCFunction)compat_Engine_get_first_buffer_address, METH_O,
     "get_first_buffer_address(segment_name) -> int: the segment's first published buffer, 0 if\n"
     "it has none or cannot be opened (strict: raises FerryError(FERRY_ENOSEG) then)."},
    {"send_probe", (PyCFunction)compat_Engine_send_probe, METH_O,
     "send_probe(peer_server_name) -> 0 if the peer's descriptor can be fetched now (with\n"
     "P2PHANDSHAKE: its listener answers), else a negative FERRY_E* code.  Cached connections\n"
     "and transfers in flight are not touched."},
    {"warmup_efa_segment", (PyCFunction)compat_Engine_warmup_efa_segment, METH_O,
     "warmup_efa_segment(segment_name) -> 0: opens (resolves and connects) the segment ahead of\n"
     "the first transfer; a negative code if it cannot be opened."},
    {"get_engine", (PyCFunction)Engine_get_engine, METH_NOARGS,
     "get_engine() -> PyCapsule named 'ferry_engine' holding this engine's ferry_engine *.\n"
     "C/C++ code may pass it to any function of ferry.h (it must not destroy it); it is valid\n"
     "until close() or the next initialize()."},
    {"get_engine_ptr", (PyCFunction)Engine_get_engine_ptr, METH_NOARGS,
     "get_engine_ptr() -> int: the same ferry_engine * as an address."},
    {"get_segment_buffers", (PyCFunction)Engine_get_segment_buffers, METH_O,
     "get_segment_buffers(segment_name) -> [(addr, length, location)] the segment publishes."},
    {"get_notifications", (PyCFunction)Engine_get_notifications, METH_NOARGS,
     "get_notifications() -> [Notification(sender, message)], oldest first; non-blocking."},
    {"get_stats", (PyCFunction)Engine_get_stats, METH_NOARGS,
     "get_stats() -> {transport: {counter: int, \"nics\": {nic: bytes}}}."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"segment_name", (getter)Engine_segment_name, NULL, "this engine's segment name, 'host:port'", NULL},
    {"initialized", (getter)Engine_initialized, NULL, "True between initialize() and close()", NULL},
    {"strict", (getter)Engine_strict, NULL,
     "True for ferry's native convention (errors in the call raise), False for the reference's", NULL},
    {"transports", (getter)Engine_transports, NULL,
     "the transports this engine runs, e.g. ['tcp'] after 'rdma' fell back for want of a NIC", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* engine_methods, memory_methods, transfer_methods, batch_methods (filled by engine_type_methods). */
static PyMethodDef all_methods[96];

static PyMethodDef *engine_type_methods(void)
{
    size_t n = 0;
    for (PyMethodDef *m = engine_methods; m->ml_name; m++)
        all_methods[n++] = *m;
    for (PyMethodDef *m = memory_methods; m->ml_name; m++)
        all_methods[n++] = *m;
    for (PyMethodDef *m = transfer_methods; m->ml_name; m++)
        all_methods[n++] = *m;
    for (PyMethodDef *m = batch_methods; m->ml_name && n + 1 < sizeof all_methods / sizeof all_methods[0]; m++)
        all_methods[n++] = *m;
    return all_methods;
}

PyTypeObject Engine_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ferry._ferry.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Engine([managed_pool_size]): one ferry engine; see ferry.TransferEngine.",
    .tp_new = Engine_new,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_getset = engine_getset,
};

int engine_type_ready(void)
{
    Engine_Type.tp_methods = engine_type_methods();
    return PyType_Ready(&Engine_Type);
}
