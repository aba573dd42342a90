/*
 * log.h — leveled logging to stderr, off the hot path.
 *
 * The level is process-wide (the last engine created sets it; FERRY_LOG_LEVEL
 * overrides).  Calls below the level cost one integer compare.
 */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

#include <stdatomic.h>

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

#endif
