/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_common.h — promises every libFuzzer target of tests/fuzz/ checks
 * after a decoder refused its input: the code is one the decoder names, and
 * the detail message (which reaches logs) holds no control character a peer
 * could have slipped in.  Header-only; one fuzzing thread.
 */
#ifndef FERRY_FUZZ_COMMON_H
#define FERRY_FUZZ_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>

#include "err.h"

/* Aborts unless the last detail message is printable ASCII (a tab allowed). */
static inline void fuzz_detail_clean(void)
{
    for (const unsigned char *c = (const unsigned char *)ferry_last_error(); *c; c++)
        if ((*c < 0x20 && *c != '\t') || *c >= 0x7f)
            abort();
}

/* Aborts unless rc is 0 or one of the n codes that follow. */
static inline void fuzz_rc_in(int rc, int n, ...)
{
    if (rc == 0)
        return;
    va_list ap;
    va_start(ap, n);
    bool ok = false;
    for (int i = 0; i < n; i++)
        ok |= va_arg(ap, int) == rc;
    va_end(ap);
    if (!ok)
        abort();
    fuzz_detail_clean();
}

#endif
