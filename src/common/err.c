/* SPDX-License-Identifier: Apache-2.0 */
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

#define CODE_TEXT(name, value, text) {FERRY_##name, "FERRY_" #name, text},
static const struct code_text codes[] = {FERRY_ERRNO_MAP(CODE_TEXT)};
#undef CODE_TEXT

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
