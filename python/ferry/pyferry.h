/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pyferry.h — what the C files of the `ferry._ferry` extension share: the
 * engine object, error helpers, argument conversion and the managed-buffer
 * slab.  The extension uses only the public API in ferry.h.
 *
 * Files: _ferry.c (module, errors, constants, argument parsing), engine.c
 * (TransferEngine type: lifecycle, segments, stats), memory.c (registration,
 * managed buffers), transfer.c (sync and batch transfers), batches.c (the
 * batch table: status, waiting, collecting), convert.c (Python objects to
 * addresses and request arrays), slab.c (managed buffers).
 */
#ifndef PYFERRY_H
#define PYFERRY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>

#include <ferry.h>

/* ---------------------------------------------------------------- engine object */

struct slab;

typedef struct {
    PyObject_HEAD
    ferry_engine *engine;       /* NULL before initialize() and after close() */
    int closed;
    int strict;                 /* 1: errors in the call raise (NativeTransferEngine); 0: the reference's returns */
    /* Readers: every call that uses `engine`; writer: close()/dealloc.  Taken
     * with the GIL released when it may block. */
    pthread_rwlock_t life;
    int life_writer;            /* close()/initialize() waiting for or holding the write side: new calls are
                                 * turned away (GIL held to read or change it) */
    int initializing;           /* an initialize() is creating an engine: a second one is turned away (one
                                 * of the two engines would be lost), other calls wait for it.  Changed with
                                 * the GIL and init_lock held; read with either */
    pthread_mutex_t init_lock;
    pthread_cond_t init_done;   /* initializing went back to 0 */
    unsigned closes;            /* close() calls so far (GIL): one during an initialize() undoes it */
    PyObject *segments;         /* dict: segment name (str) -> handle (int) */
    PyObject *batches;          /* dict: batch id (int) -> capsule(struct pybatch) */
    PyObject *ended;            /* dict: batch id -> (result, code) of batches transfer_check_status
                                 * collected, the newest ENDED_MAX (batches.c) */
    PyObject *regs;             /* dict: address (int) -> capsule(struct local_ref), objects kept alive */
    PyObject *stream_batches;   /* list: ids (in batches) of stream-ordered batches, freed once ended */
    uint64_t next_batch_id;
    pthread_mutex_t slab_lock;  /* guards creating `slab` */
    struct slab *slab;          /* managed buffers; created on first allocate */
    size_t managed_pool_size;
} EngineObject;

extern PyTypeObject Engine_Type;
/* Fills the method table (engine.c + transfer.c) and readies the type. */
int engine_type_ready(void);

/* Module-level objects created in _ferry.c. */
extern PyObject *FerryError;
extern PyTypeObject *RequestStatus_Type;
extern PyTypeObject *Notification_Type;

/* ---------------------------------------------------------------- errors */

/* Raises FerryError(code) whose message is `detail` (or ferry's thread-local
 * detail message when detail is NULL) plus the code's name and text.  The
 * exception carries .code, .name, .detail.  Returns NULL. */
PyObject *raise_ferry(int code, const char *detail);
/* Same, formatted. */
PyObject *raise_ferry_fmt(int code, const char *fmt, ...);
/* Remembers a failure reported through a negative return value, so that
 * ferry.last_error() can explain it.  detail NULL: ferry_last_error(). */
void note_failure(int code, const char *detail);
/* Is `code`, returned by a call that validates its arguments before doing
 * anything (open, register, submit), an error in the call itself (raise)
 * rather than a failure of the transfer (negative return)? */
int is_call_error(int code);

/* The compatibility convention (self->strict == 0): a method that raised
 * FerryError or ValueError — an error found after its arguments were parsed —
 * returns what the reference returns instead: 0 for calls that return an id
 * or address (returns_id), else the error's negative FERRY_E* code.  Code and
 * message stay in ferry.last_error().  TypeError and the rest still raise.
 * r: the method's result (NULL when it raised); strict engines get r back. */
PyObject *compat_result(EngineObject *self, PyObject *r, int returns_id);

/* Method wrappers applying compat_result, for the method tables. */
#define COMPAT_FASTKW(fn, returns_id)                                                                       \
    static PyObject *compat_##fn(EngineObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw) \
    {                                                                                                       \
        return compat_result(self, fn(self, args, nargs, kw), returns_id);                                  \
    }
#define COMPAT_O(fn, returns_id)                                                                            \
    static PyObject *compat_##fn(EngineObject *self, PyObject *arg)                                        \
    {                                                                                                       \
        return compat_result(self, fn(self, arg), returns_id);                                              \
    }

/* Raises unless the engine is usable; takes the read side of `life` on success
 * (release with engine_leave). */
int engine_enter(EngineObject *self);
void engine_leave(EngineObject *self);

/* ---------------------------------------------------------------- arguments */

/* Parses vectorcall arguments by position or keyword into out[0..n) (NULL for
 * absent optional ones).  names is a NULL-terminated list; the first `required`
 * are required.  Returns 0, or -1 with TypeError set. */
int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               const char *const *names, int required, PyObject **out);

/* ---------------------------------------------------------------- conversion */

#define LOCATION_MAX 32

/* One local buffer argument resolved to an address: an int, an object with the
 * buffer protocol (the view is held), or a torch-like tensor (a reference is
 * held).  len is 0 when unknown (an int address). */
struct local_ref {
    uintptr_t addr;
    size_t len;
    char location[LOCATION_MAX];  /* "" when not known from the object */
    int has_view;
    Py_buffer view;
    PyObject *keep;               /* tensor kept alive, or NULL */
};

/* Largest length accepted anywhere: above any user-space address range. */
#define MAX_LENGTH (1ull << 47)

/* Resolves obj; writable asks for a writable buffer (READ destinations,
 * registrations).  Returns 0, or -1 with TypeError/ValueError/BufferError set. */
int local_ref_get(PyObject *obj, int writable, struct local_ref *out);
void local_ref_release(struct local_ref *r);

/* Converts an int-like to a non-negative address / length; `what` names the
 * argument in the error message.  Return 0 or -1 with an exception set. */
int to_u64(PyObject *obj, const char *what, uint64_t *out);
/* Length rules: None takes the buffer's size (if known); else 1..MAX_LENGTH
 * (0 too with zero_ok: a transfer of nothing, whatever the address) and at
 * most the buffer's size; a length needs an address that is not 0. */
int resolve_length(PyObject *obj, const struct local_ref *r, const char *what, int zero_ok, size_t *out);

/* A batch's requests built from three Python sequences in one pass. */
struct req_array {
    struct ferry_request *reqs;
    size_t n;
    struct local_ref *refs;       /* per request, allocated only if some buffer is an object */
};
/* buffers: sequence of ints / buffer objects / tensors; peers: sequence of ints;
 * lengths: sequence of ints, one int for all, or None (each buffer object's size).
 * Empty lists are a ValueError, or with empty_ok an array of n == 0. */
int req_array_build(struct req_array *a, int opcode, ferry_segment_t seg, PyObject *buffers,
                    PyObject *peers, PyObject *lengths, int empty_ok);
void req_array_release(struct req_array *a);

/* Notification argument: None, bytes-like or str (UTF-8), at most 4096 bytes.
 * On success *buf is set (release with PyBuffer_Release if *has). */
int notify_get(PyObject *obj, Py_buffer *buf, int *has);

/* ---------------------------------------------------------------- segments */

/* Looks name up in the engine's cache, opening it (GIL released) on a miss.
 * Returns 0 or -1 with FerryError/TypeError set. */
int segment_lookup(EngineObject *self, PyObject *name, ferry_segment_t *out);

/* ---------------------------------------------------------------- transfers (transfer.c) */

enum stage { STAGE_OK, STAGE_SUBMIT, STAGE_WAIT };

/* The outcome of running a batch, and the message of its first failure. */
struct outcome {
    int rc;
    enum stage stage;
    char why[512];
};
/* Records a failure (rc, ferry's detail message) of the given stage. */
void outcome_fail(struct outcome *o, int rc, enum stage stage);
/* A call that close() cut off: close() closes the object's segments to end
 * the calls in flight, so a request that reached its segment only then
 * failed FERRY_ENOSEG; it was cancelled, as the others are (FERRY_ECANCELED).
 * GIL held (reads life_writer). */
void outcome_closing(const EngineObject *self, struct outcome *o);
/* The Python result of an outcome: 0, a negative code, or raises (an error
 * in the call found at submit). */
PyObject *outcome_result(const struct outcome *o);

/* ---------------------------------------------------------------- batch table (batches.c) */

/* One async batch in self->batches. */
struct pybatch {
    ferry_batch *batch;
    size_t n;
    struct local_ref *refs;     /* n entries or NULL: views and tensors in use */
    int waiters;                /* wait_batch calls inside ferry_batch_wait on it (GIL) */
    int collected;              /* out of the table: the last waiter frees it (GIL) */
};

/* Stores b under a new id and returns the id (or NULL, b untouched). */
PyObject *batch_store(EngineObject *self, struct pybatch *b);
/* The batch of an id; pop takes it out of the table.  NULL with ValueError
 * (unknown id) or TypeError set. */
struct pybatch *batch_find(EngineObject *self, PyObject *id, int pop);
/* Frees a batch taken out of the table (GIL held; released while freeing),
 * or leaves that to the last wait_batch still waiting on it. */
void pybatch_collect(struct pybatch *b);

/* Frees every batch of the engine: caller holds the write side of `life`,
 * without the GIL; ids/records are detached by batches_detach first. */
struct pybatch **batches_detach(EngineObject *self, size_t *count);
void pybatch_free_nogil(struct pybatch *b);
void pybatch_release_refs(struct pybatch *b);

extern PyMethodDef transfer_methods[];
extern PyMethodDef batch_methods[];      /* batches.c */
extern PyMethodDef memory_methods[];     /* memory.c */

/* For the method tables: the flags of a vectorcall method with keywords, and
 * one row {name, fn, flags, doc} with fn cast through void (*)(void) (the
 * tables hold METH_FASTCALL functions whose type is not PyCFunction). */
#define FASTKW (METH_FASTCALL | METH_KEYWORDS)
#define M(name, fn, flags, doc) {name, (PyCFunction)(void (*)(void))fn, flags, doc}

/* A str argument or NULL (None, absent, ""); sets *err and raises TypeError
 * for anything else.  (engine.c) */
const char *opt_str(PyObject *o, const char *what, int *err);

/* ---------------------------------------------------------------- slab (slab.c) */

/* Managed buffers: one host region of `size` bytes (rounded up to the largest
 * class), registered with the engine on creation, cut by a buddy allocator
 * into power-of-two blocks from SLAB_MIN to SLAB_MAX; larger requests get a
 * region of their own.  Thread-safe.  Metadata lives outside the region. */
#define SLAB_MIN_SHIFT 12   /* 4 KiB */
#define SLAB_MAX_SHIFT 24   /* 16 MiB */

/* Creates the slab's bookkeeping for a region of size bytes; the region is
 * mapped and registered by the first slab_alloc of at most 16 MiB (a larger
 * one gets a region of its own).  Returns 0 or a FERRY_E* code (detail
 * message set). */
int slab_create(size_t size, struct slab **out);
/* Unregisters nothing (the engine is gone or going) and unmaps everything. */
void slab_destroy(struct slab *s);
/* Returns the address of a block of at least len bytes, or 0 (slab_last_error
 * says why: pool exhausted, or registering a large block failed). */
uintptr_t slab_alloc(struct slab *s, ferry_engine *engine, size_t len);
/* Frees a block; len must be the length it was allocated with.  Returns 0,
 * FERRY_EINVAL (not a live block / length mismatch). */
int slab_free(struct slab *s, ferry_engine *engine, uintptr_t addr, size_t len);
/* Is [addr, addr+len) inside one live managed block?  Returns 0 when the
 * range is not in the slab region at all or lies inside a live block;
 * FERRY_ENOTREG when it touches a freed block or runs past its block. */
int slab_check(struct slab *s, uintptr_t addr, size_t len);
/* Checks every request of an array under one lock; returns 0 or the index+1
 * of the first bad one (detail message set). */
size_t slab_check_requests(struct slab *s, const struct ferry_request *reqs, size_t n);
/* The calling thread's message for the last slab failure. */
const char *slab_last_error(void);
/* Region statistics for managed_buffer_info(). */
void slab_info(struct slab *s, uintptr_t *base, size_t *size, size_t *used, size_t *large_count);

#endif
