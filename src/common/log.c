/*
 * log.c — writes one line per message to stderr with a level tag and the
 * process id, so logs of a target and an initiator on one terminal stay apart.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

atomic_int ferry_log_level = FERRY_LOG_WARN;

void ferry_log_write(int level, const char *fmt, ...)
{
    static const char *const tags[] = {"error", "warn", "info", "debug"};
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry[%d] %s: %s\n", (int)getpid(), tags[level & 3], line);
}
