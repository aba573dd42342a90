/* SPDX-License-Identifier: Apache-2.0 */
/*
 * _ferry.c — the `ferry._ferry` extension module: FerryError, constants,
 * module functions, the struct-sequence types, and the small argument parser
 * the hot methods use (vectorcall, no format strings).
 *
 * Error policy (the package docstring repeats it for users): in the native
 * (strict) class a call whose arguments are wrong raises (TypeError,
 * ValueError, FerryError with ferry's code and detail message) and a transfer
 * that was accepted and then failed returns a negative FERRY_E* code.  The
 * compatibility class returns what the reference returns for both (a negative
 * code, or 0 for calls that return an id; compat_result); only Python type
 * errors raise.  ferry.last_error() explains the most recent failure of the
 * calling thread either way.
 */
#include "pyferry.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

PyObject *FerryError;
PyTypeObject *RequestStatus_Type;
PyTypeObject *Notification_Type;

/* ---------------------------------------------------------------- errors */

static _Thread_local struct {
    int code;
    char detail[512];
} last_failure;

int is_call_error(int code)
{
    switch (code) {
    case FERRY_ECONN:
    case FERRY_ETIMEDOUT:
    case FERRY_EPROTO:
    case FERRY_EBUSY:
    case FERRY_ESTALE:
    case FERRY_EIO:
    case FERRY_ECANCELED:
    case FERRY_EPERM:
        return 0;
    default:
        return 1;
    }
}

void note_failure(int code, const char *detail)
{
    last_failure.code = code;
    snprintf(last_failure.detail, sizeof last_failure.detail, "%s", detail ? detail : ferry_last_error());
}

PyObject *raise_ferry(int code, const char *detail)
{
    char copy[512];
    snprintf(copy, sizeof copy, "%s", detail ? detail : ferry_last_error());
    note_failure(code, copy);
    PyObject *msg = copy[0] ? PyUnicode_FromFormat("%s [%s: %s]", copy, ferry_err_name(code), ferry_strerror(code))
                            : PyUnicode_FromFormat("%s: %s", ferry_err_name(code), ferry_strerror(code));
    if (!msg)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(FerryError, msg);
    Py_DECREF(msg);
    if (!exc)
        return NULL;
    PyObject *c = PyLong_FromLong(code), *n = PyUnicode_FromString(ferry_err_name(code)),
             *d = PyUnicode_DecodeUTF8(copy, (Py_ssize_t)strlen(copy), "replace");
    if (c && n && d && !PyObject_SetAttrString(exc, "code", c) && !PyObject_SetAttrString(exc, "name", n) &&
        !PyObject_SetAttrString(exc, "detail", d))
        PyErr_SetObject(FerryError, exc);
    Py_XDECREF(c), Py_XDECREF(n), Py_XDECREF(d);
    Py_DECREF(exc);
    return NULL;
}

PyObject *raise_ferry_fmt(int code, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return raise_ferry(code, text);
}

PyObject *compat_result(EngineObject *self, PyObject *r, int returns_id)
{
    if (r || self->strict)
        return r;
    int ferry = PyErr_ExceptionMatches(FerryError);
    if (!ferry && !PyErr_ExceptionMatches(PyExc_ValueError))
        return NULL;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    long code = FERRY_EINVAL;
    if (ferry) { /* raise_ferry already noted code and detail */
        PyObject *c = v ? PyObject_GetAttrString(v, "code") : NULL;
        code = c ? PyLong_AsLong(c) : FERRY_EINVAL;
        Py_XDECREF(c);
    } else {
        PyObject *text = v ? PyObject_Str(v) : NULL;
        const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
        note_failure(FERRY_EINVAL, msg ? msg : "invalid argument");
        Py_XDECREF(text);
    }
    PyErr_Clear();
    Py_XDECREF(t), Py_XDECREF(v), Py_XDECREF(tb);
    return PyLong_FromLong(returns_id ? 0 : code);
}

/* ---------------------------------------------------------------- arguments */

int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               const char *const *names, int required, PyObject **out)
{
    int total = 0;
    while (names[total])
        total++;
    if (nargs > total) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname, total, nargs);
        return -1;
    }
    for (int i = 0; i < total; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < total && found < 0; i++)
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
                found = i;
        if (found < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, key);
            return -1;
        }
        if (out[found]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname, names[found]);
            return -1;
        }
        out[found] = args[nargs + k];
    }
    for (int i = 0; i < required; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s' (pos %d)", fname, names[i], i + 1);
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- module functions */

static PyObject *mod_strerror(PyObject *m, PyObject *arg)
{
    (void)m;
    int code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(ferry_strerror(code));
}

static PyObject *mod_err_name(PyObject *m, PyObject *arg)
{
    (void)m;
    int code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(ferry_err_name(code));
}

static PyObject *mod_last_error(PyObject *m, PyObject *noargs)
{
    (void)m, (void)noargs;
    return Py_BuildValue("(iss)", last_failure.code, ferry_err_name(last_failure.code), last_failure.detail);
}

/* For the package's helpers written in Python (write/read_bytes_*): a failure
 * they answer with a code, remembered as the C methods' are. */
static PyObject *mod_note_failure(PyObject *m, PyObject *args)
{
    (void)m;
    int code;
    const char *detail;
    if (!PyArg_ParseTuple(args, "is:_note_failure", &code, &detail))
        return NULL;
    note_failure(code, detail);
    Py_RETURN_NONE;
}

static PyObject *mod_config_knobs(PyObject *m, PyObject *noargs)
{
    (void)m, (void)noargs;
    size_t n = 0;
    const struct ferry_config_knob *k = ferry_config_describe(&n);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *t = Py_BuildValue("(sss)", k[i].env, k[i].default_text, k[i].doc);
        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

static PyObject *mod_process_exiting(PyObject *m, PyObject *noargs)
{
    (void)m, (void)noargs;
    ferry_process_exiting();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"strerror", mod_strerror, METH_O, "strerror(code) -> str: ferry_strerror(code)."},
    {"err_name", mod_err_name, METH_O, "err_name(code) -> str: the symbolic name, e.g. 'FERRY_ERANGE'."},
    {"last_error", mod_last_error, METH_NOARGS,
     "last_error() -> (code, name, detail) of the calling thread's most recent failure\n"
     "(a negative return value or a FerryError).  (0, 'FERRY_OK', '') if none."},
    {"_note_failure", mod_note_failure, METH_VARARGS,
     "_note_failure(code, detail): what last_error() returns next in this thread (the package's helpers)."},
    {"config_knobs", mod_config_knobs, METH_NOARGS,
     "config_knobs() -> [(env, default, doc)]: every FERRY_* environment variable."},
    {"_process_exiting", mod_process_exiting, METH_NOARGS,
     "_process_exiting(): ferry_process_exiting(); the package's atexit hook calls it."},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------- types */

static PyStructSequence_Field status_fields[] = {
    {"state", "'PENDING', 'COMPLETED', 'FAILED', 'TIMEOUT' or 'UNUSED'"},
    {"error", "0 or the negative FERRY_E* code that ended the request"},
    {"error_name", "'FERRY_OK' or the code's name"},
    {"message", "why it failed or timed out; '' otherwise"},
    {"transferred", "bytes known to have arrived"},
    {NULL, NULL},
};
static PyStructSequence_Desc status_desc = {"ferry.RequestStatus", "Status of one request of a batch.",
                                            status_fields, 5};

static PyStructSequence_Field note_fields[] = {
    {"sender", "segment name of the engine that sent it"},
    {"message", "the bytes given as notify="},
    {NULL, NULL},
};
static PyStructSequence_Desc note_desc = {"ferry.Notification", "A notification received from a peer.",
                                          note_fields, 2};

static int add_constants(PyObject *m)
{
#define ERRNO_CODE(name, value, text) FERRY_##name,
    static const int codes[] = {FERRY_ERRNO_MAP(ERRNO_CODE)}; /* every code, from ferry.h's one list */
#undef ERRNO_CODE
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (PyModule_AddIntConstant(m, ferry_err_name(codes[i]), codes[i]))
            return -1;
    if (PyModule_AddIntConstant(m, "READ", FERRY_READ) || PyModule_AddIntConstant(m, "WRITE", FERRY_WRITE) ||
        PyModule_AddIntConstant(m, "SLAB_MIN_BLOCK", 1 << SLAB_MIN_SHIFT) ||
        PyModule_AddIntConstant(m, "SLAB_MAX_BLOCK", 1 << SLAB_MAX_SHIFT))
        return -1;
    char version[32];
    snprintf(version, sizeof version, "%d.%d.%d", FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR, FERRY_VERSION_PATCH);
    return PyModule_AddStringConstant(m, "__version__", version);
}

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "ferry._ferry",
    "C extension behind the `ferry` package; use `ferry.TransferEngine`.",
    -1,
    module_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__ferry(void)
{
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    FerryError = PyErr_NewExceptionWithDoc(
        "ferry.FerryError",
        "A ferry call failed.  Attributes: code (negative FERRY_E* int), name ('FERRY_ENOSEG'),\n"
        "detail (ferry's message: which address, which peer, why).  Subclass of RuntimeError.",
        PyExc_RuntimeError, NULL);
    RequestStatus_Type = PyStructSequence_NewType(&status_desc);
    Notification_Type = PyStructSequence_NewType(&note_desc);
    if (!FerryError || !RequestStatus_Type || !Notification_Type || engine_type_ready() < 0)
        goto fail;
    Py_INCREF(FerryError);
    if (PyModule_AddObject(m, "FerryError", FerryError))
        goto fail;
    Py_INCREF(RequestStatus_Type);
    if (PyModule_AddObject(m, "RequestStatus", (PyObject *)RequestStatus_Type))
        goto fail;
    Py_INCREF(Notification_Type);
    if (PyModule_AddObject(m, "Notification", (PyObject *)Notification_Type))
        goto fail;
    Py_INCREF(&Engine_Type);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&Engine_Type) || add_constants(m))
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
