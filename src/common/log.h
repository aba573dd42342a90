/* SPDX-License-Identifier: Apache-2.0 */
/*
 * log.h — leveled logging to stderr, off the hot path.
 *
 * The level is process-wide (the last engine created sets it; FERRY_LOG_LEVEL
 * overrides).  Calls below the level cost one integer compare.
 *
 * Anything a peer chose (its segment name, a notification's sender) goes
 * through log_sanitize before it reaches a log line, so a peer cannot forge
 * lines with a newline or terminal escapes; warnings a peer can trigger at
 * will are rate-limited with struct log_ratelimit.
 */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { FERRY_LOG_ERROR = 0, FERRY_LOG_WARN = 1, FERRY_LOG_INFO = 2, FERRY_LOG_DEBUG = 3 };

extern atomic_int ferry_log_level; /* read by every thread: atomic, relaxed */

void ferry_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define FERRY_LOG(level, ...)                                                                  \
    do {                                                                                       \
        if ((level) <= atomic_load_explicit(&ferry_log_level, memory_order_relaxed))           \
            ferry_log_write((level), __VA_ARGS__);                                             \
    } while (0)
#define LOG_ERROR(...) FERRY_LOG(FERRY_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) FERRY_LOG(FERRY_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) FERRY_LOG(FERRY_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) FERRY_LOG(FERRY_LOG_DEBUG, __VA_ARGS__)

/* Copies at most n bytes of a peer-supplied string (stopping at a NUL) into
 * out (cap bytes, always NUL-terminated), writing every byte outside
 * printable ASCII (newline, escape, DEL, bytes >= 0x80) and the backslash
 * as \xNN.  Truncates to fit.  Returns out, so it can be a printf argument. */
char *log_sanitize(const char *in, size_t n, char *out, size_t cap);

/* At most one message per interval: log_ratelimit_ok returns true when a
 * message may be written now and stores in *suppressed how many were held
 * back since the last one.  Thread-safe. */
struct log_ratelimit {
    uint64_t interval_ns;
    uint64_t next_ns;       /* monotonic: no message before this */
    uint64_t suppressed;
    pthread_mutex_t lock;
};
void log_ratelimit_init(struct log_ratelimit *r, unsigned interval_ms);
bool log_ratelimit_ok(struct log_ratelimit *r, uint64_t *suppressed);

#endif
