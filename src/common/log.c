/* SPDX-License-Identifier: Apache-2.0 */
/*
 * log.c — writes one line per message to stderr with a level tag and the
 * process id, so logs of a target and an initiator on one terminal stay apart;
 * escapes peer-supplied strings and rate-limits warnings peers can trigger.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "net.h"

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

char *log_sanitize(const char *in, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return out;
    for (size_t i = 0; in && i < n && in[i]; i++) {
        unsigned char ch = (unsigned char)in[i];
        bool plain = ch >= 0x20 && ch < 0x7f && ch != '\\';
        size_t need = plain ? 1 : 4;
        if (o + need >= cap)
            break;
        if (plain) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return out;
}

void log_ratelimit_init(struct log_ratelimit *r, unsigned interval_ms)
{
    r->interval_ns = (uint64_t)interval_ms * 1000000u;
    r->next_ns = 0;
    r->suppressed = 0;
    pthread_mutex_init(&r->lock, NULL);
}

bool log_ratelimit_ok(struct log_ratelimit *r, uint64_t *suppressed)
{
    uint64_t now = now_ns();
    pthread_mutex_lock(&r->lock);
    bool ok = now >= r->next_ns;
    if (ok) {
        *suppressed = r->suppressed;
        r->suppressed = 0;
        r->next_ns = now + r->interval_ns;
    } else {
        r->suppressed++;
    }
    pthread_mutex_unlock(&r->lock);
    return ok;
}
