/*
 * err.c — names and texts of FERRY_E* codes; the thread-local detail message.
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char detail[512];

struct code_text {
    int code;
    const char *name;
    const char *text;
};

static const struct code_text codes[] = {
    {FERRY_OK, "FERRY_OK", "success"},
    {FERRY_EINVAL, "FERRY_EINVAL", "invalid argument"},
    {FERRY_ENOMEM, "FERRY_ENOMEM", "out of memory"},
    {FERRY_ENOTREG, "FERRY_ENOTREG", "local memory is not registered"},
    {FERRY_ERANGE, "FERRY_ERANGE", "remote range outside the target's registered buffers"},
    {FERRY_ENOSEG, "FERRY_ENOSEG", "unknown segment"},
    {FERRY_ECONN, "FERRY_ECONN", "peer unreachable or connection broken"},
    {FERRY_ETIMEDOUT, "FERRY_ETIMEDOUT", "timed out"},
    {FERRY_EPROTO, "FERRY_EPROTO", "malformed data from peer"},
    {FERRY_EVERSION, "FERRY_EVERSION", "incompatible peer version"},
    {FERRY_EFULL, "FERRY_EFULL", "batch is full"},
    {FERRY_ENODEV, "FERRY_ENODEV", "no such device"},
    {FERRY_ENOTSUP, "FERRY_ENOTSUP", "not supported"},
    {FERRY_EEXIST, "FERRY_EEXIST", "overlaps an existing registration"},
    {FERRY_EBUSY, "FERRY_EBUSY", "busy"},
    {FERRY_ESTALE, "FERRY_ESTALE", "peer restarted; descriptor is stale"},
    {FERRY_EIO, "FERRY_EIO", "I/O or device error"},
    {FERRY_ECANCELED, "FERRY_ECANCELED", "canceled by shutdown"},
    {FERRY_EPERM, "FERRY_EPERM", "peer failed authentication or is not allowed"},
};

static const struct code_text *lookup(int err)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == err)
            return &codes[i];
    return NULL;
}

const char *ferry_strerror(int err)
{
    const struct code_text *c = lookup(err);
    return c ? c->text : "unknown ferry error code";
}

const char *ferry_err_name(int err)
{
    const struct code_text *c = lookup(err);
    return c ? c->name : "FERRY_E?";
}

const char *ferry_last_error(void)
{
    return detail;
}

int ferry_fail(int code, const char *fmt, ...)
{
    /* format aside first: callers may pass ferry_last_error() as an argument */
    char text[sizeof detail];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    memcpy(detail, text, sizeof detail);
    return code;
}

void ferry_clear_error(void)
{
    detail[0] = '\0';
}
