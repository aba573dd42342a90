/* SPDX-License-Identifier: Apache-2.0 */
/*
 * err.h — error codes and the thread-local detail message.
 *
 * Every layer reports failure as a negative FERRY_E* code and, where the code
 * alone does not say which object was wrong, records a detail message with
 * ferry_fail().  The detail belongs to the calling thread (like errno).
 */
#ifndef FERRY_ERR_H
#define FERRY_ERR_H

#include "ferry.h"

/* Records a printf-style detail message for the calling thread and returns
 * code, so callers can write `return ferry_fail(FERRY_ERANGE, "...", ...);`. */
int ferry_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears the calling thread's detail message. */
void ferry_clear_error(void);

#endif
