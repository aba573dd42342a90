/* SPDX-License-Identifier: Apache-2.0 */
/*
 * trace.c — the FERRY_TRACE timeline (see trace.h).  One array of records
 * per process, filled by every thread through an atomic index and written
 * out once at exit.  The file is created when tracing starts, so a path that
 * cannot be written is reported then (and tracing stays off), not after the
 * run it was meant to record.
 */
#include "trace.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define TRACE_RECORDS (1u << 21) /* 48 MiB; records past it are dropped */

struct trace_record {
    uint64_t ns;
    uint64_t arg;
    uint32_t tid;
    uint32_t ev;
};

static const char *const names[TR_NEVENTS] = {
    [TR_BATCH_SUBMIT] = "batch_submit",   [TR_BATCH_SUBMITTED] = "batch_submitted",
    [TR_BATCH_DONE] = "batch_done",       [TR_BATCH_WOKEN] = "batch_woken",
    [TR_STAGE_QUEUED] = "stage_queued",   [TR_STAGE_ISSUE] = "stage_issue",
    [TR_STAGE_RETIRED] = "stage_retired", [TR_TCP_SEND] = "tcp_send",
    [TR_TCP_SENT] = "tcp_sent",           [TR_TCP_ACK] = "tcp_ack",
    [TR_SRV_FRAME] = "srv_frame",         [TR_SRV_PAYLOAD] = "srv_payload",
    [TR_SRV_COPY] = "srv_copy",           [TR_SRV_ANSWERED] = "srv_answered",
    [TR_SHM_GROUP] = "shm_group",         [TR_SHM_COPIED] = "shm_copied",
    [TR_COPY_BEGIN] = "copy_begin",       [TR_COPY_QUEUED] = "copy_queued",
    [TR_COPY_SYNCED] = "copy_synced",     [TR_COPY_WAIT] = "copy_wait",
};

atomic_bool ferry_trace_on;
static struct trace_record *records;
static atomic_uint_fast64_t next;
static char path[512];
static FILE *out;   /* open from trace_setup to trace_write */
static pid_t owner; /* the process that opened it (a forked child inherits the rest) */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static _Thread_local uint32_t my_tid;

void ferry_trace_put(enum trace_event ev, uint64_t arg)
{
    uint64_t i = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed);
    if (i >= TRACE_RECORDS)
        return;
    if (!my_tid)
        my_tid = (uint32_t)syscall(SYS_gettid);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    records[i] = (struct trace_record){(uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, arg, my_tid,
                                       (uint32_t)ev};
}

static void trace_write(void)
{
    if (getpid() != owner) /* a forked child's copy: the file is its parent's */
        return;
    atomic_store(&ferry_trace_on, false);
    uint64_t n = atomic_load(&next);
    FILE *f = out;
    uint64_t kept = n < TRACE_RECORDS ? n : TRACE_RECORDS;
    for (uint64_t i = 0; i < kept; i++) {
        const struct trace_record *r = &records[i];
        if (r->ns) /* a record claimed but not yet written when the process ended */
            fprintf(f, "%llu %u %s %llu\n", (unsigned long long)r->ns, r->tid,
                    r->ev < TR_NEVENTS ? names[r->ev] : "?", (unsigned long long)r->arg);
    }
    if (n > kept)
        fprintf(f, "# %llu records dropped (more than %u)\n", (unsigned long long)(n - kept), TRACE_RECORDS);
    errno = 0;
    if (ferror(f) | fclose(f)) /* both: fclose also when the writes failed */
        LOG_WARN("FERRY_TRACE: writing %s failed: %s", path, errno ? strerror(errno) : "write error");
}

static void trace_setup(void)
{
    const char *p = getenv("FERRY_TRACE");
    if (!p || !*p)
        return;
    /* ".%d" -> the process id, so two processes can share one setting */
    const char *pid = strstr(p, "%d");
    int len = pid ? snprintf(path, sizeof path, "%.*s%d%s", (int)(pid - p), p, (int)getpid(), pid + 2)
                  : snprintf(path, sizeof path, "%s", p);
    if (len < 0 || (size_t)len >= sizeof path) {
        LOG_WARN("FERRY_TRACE=%.60s...: the path is longer than %zu bytes; tracing off", p, sizeof path - 1);
        return;
    }
    out = fopen(path, "we");
    if (!out) {
        LOG_WARN("FERRY_TRACE: cannot create %s: %s; tracing off", path, strerror(errno));
        return;
    }
    records = calloc(TRACE_RECORDS, sizeof *records);
    if (!records) {
        LOG_WARN("FERRY_TRACE: no memory for the trace; tracing off (%s stays empty)", path);
        fclose(out);
        return;
    }
    owner = getpid();
    atexit(trace_write);
    atomic_store(&ferry_trace_on, true);
}

void ferry_trace_init(void)
{
    pthread_once(&once, trace_setup);
}
