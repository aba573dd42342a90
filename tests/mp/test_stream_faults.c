/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_stream_faults.c — the error paths of stream-ordered submits to the
 * engine's own segment (stream.c local_submit), on the strict sim device:
 * the copies enqueued on the caller's stream are refused at enqueue
 * (FERRY_SIM_FAIL_COPY "N:start"), fail on the device ("N": the stream's
 * sticky error), or the caller's stream is one of another device (stream_copy
 * and stream_host_func refuse it).  In each, the batch must end FAILED with a
 * named error, every access to its memory must end (unregister returns), the
 * stream must not be left waiting, the failure must be logged (as the
 * transfer path's are: a Python *_on_cuda caller has no batch to look at),
 * and nothing may leak (the ASan build).
 *
 * Each case runs in a fresh process of this program (--case NAME): sim copy
 * jobs are numbered from 1 in the order a process makes them.  Job 1 fills
 * the own buffer with pattern FILL_SEED; job 2 is the submit's copy; job 3 a
 * later copy on the same stream (where it stays healthy).
 *
 * A copy that fails on the device is seen by the mark the stream skips
 * (stream_write_flag): the host function ending the batch may not ask the
 * device for the stream's error, so the message names the failed copy.
 * Nothing here depends on timing: the bounded waits only keep a broken run
 * from hanging.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "device/device.h"
#include "fake_target.h"
#include "net.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"

#define LEN (64u << 10)
#define FILL_SEED 5
#define DATA_SEED 9
#define BOUND_S 120 /* keeps a broken run from hanging; not a measurement */

struct fixture {
    ferry_engine *e;
    const struct ferry_device_ops *sim;
    ferry_stream *stream;     /* of sim:0 */
    ferry_segment_t self;
    char *own;                /* device memory, registered remote-accessible (the own segment's) */
    char *host;               /* host memory, registered local */
    char *after;              /* what a copy after the submit saw of `own` */
    const char *location;     /* of `own`: "sim:0", or "sim:1" in the wrong-stream case */
};

/* Engine, stream, the buffers and the own segment; own filled with
 * FILL_SEED by copy job 1, host with DATA_SEED. */
static void fixture_start(struct fixture *f, const char *location)
{
    memset(f, 0, sizeof *f);
    f->location = location;
    assert_int_equal(ferry_engine_create(NULL, &f->e), 0);
    f->sim = ferry_device_find("sim");
    assert_non_null(f->sim);
    assert_int_equal(f->sim->stream_create(0, &f->stream), 0);
    assert_int_equal(ferry_mem_alloc(f->e, location, LEN, (void **)&f->own), 0);
    assert_int_equal(ferry_register_memory(f->e, f->own, LEN, location, 1), 0);
    f->host = malloc(LEN);
    f->after = calloc(1, LEN);
    assert_non_null(f->host);
    assert_non_null(f->after);
    assert_int_equal(ferry_register_memory(f->e, f->host, LEN, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(f->e), &f->self), 0);
    if (strcmp(location, "sim:0") == 0) { /* copy job 1 */
        pattern_fill(f->host, LEN, FILL_SEED, 0);
        struct ferry_copy c = {f->own, f->host, LEN};
        assert_int_equal(f->sim->copy_async(f->stream, FERRY_COPY_H2D, &c, 1), 0);
        assert_int_equal(f->sim->stream_sync(f->stream), 0);
    }
    pattern_fill(f->host, LEN, DATA_SEED, 0);
}

/* ferry_unregister_memory of the fixture's buffers, in a thread: it waits for
 * every access to the range, so one the submit never ended would hold it for
 * ever. */
static void *unregister_both(void *arg)
{
    struct fixture *f = arg;
    intptr_t rc = ferry_unregister_memory(f->e, f->own);
    if (!rc)
        rc = ferry_unregister_memory(f->e, f->host);
    return (void *)rc;
}

static void assert_accesses_ended(struct fixture *f)
{
    pthread_t th;
    void *rc = (void *)-1;
    assert_int_equal(pthread_create(&th, NULL, unregister_both, f), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += BOUND_S;
    if (pthread_timedjoin_np(th, &rc, &until) != 0)
        fail_msg("unregister did not return: an access of the failed submit was never ended");
    assert_int_equal((intptr_t)rc, 0);
}

static void fixture_stop(struct fixture *f)
{
    f->sim->stream_sync(f->stream);
    f->sim->stream_destroy(f->stream);
    ferry_engine_destroy(f->e);
    ferry_mem_free(NULL, f->location, f->own, LEN);
    free(f->host);
    free(f->after);
}

/* One stream-ordered request between host and own (WRITE: host -> own) on
 * f->stream with `location`; with `later`, copy job 3 after it copies own to
 * f->after on the same stream (only where the stream stays healthy: after a
 * copy failed on the device, copy_async may see the sticky error or not,
 * depending on whether the device has run the failed copy yet).  Returns the
 * submit's result; *b is the batch. */
static int submit_one(struct fixture *f, int opcode, const char *location, bool later, ferry_batch **b)
{
    assert_int_equal(ferry_batch_alloc(f->e, 1, b), 0);
    struct ferry_request q = {opcode, f->host, f->self, (uint64_t)(uintptr_t)f->own, LEN};
    int rc = ferry_batch_submit_on_stream(*b, &q, 1, location, f->stream);
    if (later) {
        struct ferry_copy c = {f->after, f->own, LEN};
        assert_int_equal(f->sim->copy_async(f->stream, FERRY_COPY_D2H, &c, 1), 0);
    }
    return rc;
}

/* The batch ended FAILED with `code`, its message naming `why`. */
static void assert_failed(ferry_batch *b, int code, const char *why)
{
    assert_int_equal(ferry_batch_wait(b, -1), code);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    assert_int_equal(st.error, code);
    assert_int_equal(st.transferred, 0);
    if (!strstr(st.message, why))
        fail_msg("the request's message \"%s\" does not name \"%s\"", st.message, why);
}

/* ------------------------------------------------------------ cases */

/* The submit's copy is refused when enqueued: nothing runs, the batch ends
 * FAILED FERRY_EIO naming the fault, and the stream goes on with the copy
 * after it (which sees the own buffer untouched). */
static void write_copy_refused_at_enqueue(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2:start", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_batch *b;
    assert_int_equal(submit_one(&f, FERRY_WRITE, "sim:0", true, &b), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    assert_failed(b, FERRY_EIO, "FERRY_SIM_FAIL_COPY");
    assert_int_equal(pattern_check(f.after, LEN, FILL_SEED, 0), -1);
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

static void read_copy_refused_at_enqueue(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2:start", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_batch *b;
    assert_int_equal(submit_one(&f, FERRY_READ, "sim:0", true, &b), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    assert_failed(b, FERRY_EIO, "FERRY_SIM_FAIL_COPY");
    assert_int_equal(pattern_check(f.host, LEN, DATA_SEED, 0), -1); /* nothing read into it */
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

/* The caller passes a stream of sim:0 with location "sim:1" (vLLM's worker
 * on GPU 1 with the current stream of GPU 0): stream_copy and
 * stream_host_func refuse it.  The batch ends FAILED FERRY_EINVAL naming the
 * stream, and the stream of sim:0 is left as it was. */
static void stream_of_another_device(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f, "sim:1");
    ferry_batch *b;
    int rc = submit_one(&f, FERRY_WRITE, "sim:1", false, &b);
    assert_true(rc == 0 || rc == FERRY_EINVAL);
    assert_failed(b, FERRY_EINVAL, "not a stream of that device");
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

/* ------------------------------------------------------------ known bugs */

/* The submit's copy fails on the device (the stream's sticky FERRY_EIO).
 * The host function that ends the batch still runs on the sim (as it must:
 * ferry's side of ordering may not hang), and the batch ends COMPLETED with
 * every byte counted as transferred, though nothing arrived.  (On CUDA
 * cuLaunchHostFunc never runs after a fault, and the batch never ends.) */
static void write_copy_fails_on_the_device(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_batch *b;
    assert_int_equal(submit_one(&f, FERRY_WRITE, "sim:0", false, &b), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), FERRY_EIO); /* sticky, as on hardware */
    /* (the host function that ends the batch may not ask the device why) */
    assert_failed(b, FERRY_EIO, "a copy on the stream failed");
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

static void read_copy_fails_on_the_device(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_batch *b;
    assert_int_equal(submit_one(&f, FERRY_READ, "sim:0", false, &b), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), FERRY_EIO);
    assert_failed(b, FERRY_EIO, "a copy on the stream failed");
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

/* A stream the device refuses is an error in the call, as the reference's
 * cudaLaunchHostFunc failure (RuntimeError) and ferry's own path for
 * transfers (submit_on_stream returns the error after ending the batch):
 * the own-segment path returns 0, so Python's *_on_cuda raises nothing. */
static void stream_of_another_device_is_refused_in_the_call(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f, "sim:1");
    ferry_batch *b;
    assert_int_equal(submit_one(&f, FERRY_WRITE, "sim:1", false, &b), FERRY_EINVAL);
    assert_failed(b, FERRY_EINVAL, "not a stream of that device");
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

/* A stream-ordered transfer that fails after the call returned is logged
 * (the transfer path's runner says "stream-ordered transfer failed"; the
 * Python *_on_cuda promise it: their caller has no batch to look at).  The
 * own-segment path logs nothing when its copy is refused: a compat caller
 * never learns.  stderr goes to a file for the case (a process of its own). */
static void own_copy_failure_is_logged(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2:start", 1);
    char path[] = "/tmp/ferry-stream-faults-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0 && dup2(fd, 2) == 2);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_batch *b;
    int rc = submit_one(&f, FERRY_WRITE, "sim:0", true, &b);
    f.sim->stream_sync(f.stream);
    int wrc = ferry_batch_wait(b, -1);
    ferry_batch_free(b);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char log[4096] = "";
    ssize_t got = pread(fd, log, sizeof log - 1, 0);
    close(fd);
    log[got > 0 ? got : 0] = '\0';
    assert_int_equal(rc, 0);
    assert_int_equal(wrc, FERRY_EIO);
    if (!strstr(log, "FERRY_SIM_FAIL_COPY"))
        fail_msg("the failed stream-ordered copy was not logged; the log had: \"%s\"", log);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

/* Device memory to another engine (here one of this process with host
 * memory) goes through a bounce buffer with the copies on the stream
 * (stream.c bounce_submit): the WRITE's copy out of device memory (job 2)
 * fails on the device, so nothing may be sent; the READ's copy into device
 * memory (job 2, after the transfer) fails, so the batch may not say
 * COMPLETED. */
static void bounced_copy_fails_on_the_device(int opcode)
{
    setenv("FERRY_SIM_FAIL_COPY", "2", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_engine *e2;
    assert_int_equal(ferry_engine_create(NULL, &e2), 0);
    char *peer = malloc(LEN);
    pattern_fill(peer, LEN, 33, 0);
    assert_int_equal(ferry_register_memory(e2, peer, LEN, "cpu", 1), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(f.e, ferry_engine_segment_name(e2), &seg), 0);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b), 0);
    struct ferry_request q = {opcode, f.own, seg, (uint64_t)(uintptr_t)peer, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f.stream), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), FERRY_EIO);
    assert_failed(b, FERRY_EIO, "a copy on the stream failed");
    assert_int_equal(pattern_check(peer, LEN, 33, 0), -1); /* a WRITE sent nothing */
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    ferry_engine_destroy(e2);
    free(peer);
    fixture_stop(&f);
}

static void bounced_write_copy_fails_on_the_device(void **state)
{
    (void)state;
    bounced_copy_fails_on_the_device(FERRY_WRITE);
}

static void bounced_read_copy_fails_on_the_device(void **state)
{
    (void)state;
    bounced_copy_fails_on_the_device(FERRY_READ);
}

/* A mixed bounced batch (stream.c bounce_submit): a WRITE out of device
 * memory and a READ into device memory, so the job is a READ's (inner) and
 * the WRITE's copy out (job 2) precedes the transfer.  That copy fails on
 * the device: the WRITE may not send the bounce buffer's bytes (before the
 * fix it did: the peer's half was overwritten by a fresh buffer's zeros),
 * and the batch ends FAILED. */
static void bounced_mixed_write_copy_fails_on_the_device(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_engine *e2;
    assert_int_equal(ferry_engine_create(NULL, &e2), 0);
    char *peer = malloc(LEN);
    assert_non_null(peer);
    pattern_fill(peer, LEN, 33, 0);
    assert_int_equal(ferry_register_memory(e2, peer, LEN, "cpu", 1), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(f.e, ferry_engine_segment_name(e2), &seg), 0);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f.e, 2, &b), 0);
    const size_t half = LEN / 2;
    struct ferry_request q[2] = {
        {FERRY_WRITE, f.own, seg, (uint64_t)(uintptr_t)peer, half},
        {FERRY_READ, f.own + half, seg, (uint64_t)(uintptr_t)(peer + half), half},
    };
    assert_int_equal(ferry_batch_submit_on_stream(b, q, 2, "sim:0", f.stream), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), FERRY_EIO);
    assert_int_equal(ferry_batch_wait(b, -1), FERRY_EIO);
    if (pattern_check(peer, LEN, 33, 0) != -1)
        fail_msg("the WRITE whose copy out of device memory failed sent the bounce buffer's bytes");
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    assert_int_equal(st.error, FERRY_EIO);
    if (!strstr(st.message, "a copy on the stream failed"))
        fail_msg("the WRITE's message \"%s\" does not name the failed copy", st.message);
    assert_int_equal(ferry_batch_status(b, 1, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    ferry_engine_destroy(e2);
    free(peer);
    fixture_stop(&f);
}

/* ------------------------------------------------------------ bounce setup refused */

/* Another engine of this process with registered host memory (PEER_SEED)
 * and its segment opened from f->e. */
#define PEER_SEED 33
struct peer {
    ferry_engine *e;
    char *mem;
    ferry_segment_t seg;
};

static void peer_start(struct fixture *f, struct peer *p)
{
    assert_int_equal(ferry_engine_create(NULL, &p->e), 0);
    p->mem = malloc(LEN);
    assert_non_null(p->mem);
    pattern_fill(p->mem, LEN, PEER_SEED, 0);
    assert_int_equal(ferry_register_memory(p->e, p->mem, LEN, "cpu", 1), 0);
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(p->e), &p->seg), 0);
}

static void peer_stop(struct peer *p)
{
    ferry_engine_destroy(p->e);
    free(p->mem);
}

/* A bounced WRITE of the own buffer (FILL_SEED) to the peer whose setup is
 * refused (FERRY_SIM_REFUSE=host_alloc:N: the bounce buffer, or the flag
 * page after it): the call returns FERRY_ENOMEM naming the refusal with
 * nothing enqueued (the peer keeps its bytes, the stream is idle), the
 * accesses end; the batch takes the same submit again, which then goes
 * through.  LeakSanitizer (the ASan build) sees nothing left.  Host
 * allocations of sim in this process: the staging pool of sim:0 at
 * fixture_start (1), then the bounce buffer (2), then the flag page (3):
 * a different count fails the fixture or the message check. */
static void bounced_setup_refused(const char *what)
{
    struct fixture f;
    fixture_start(&f, "sim:0");
    struct peer p;
    peer_start(&f, &p);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b), 0);
    struct ferry_request q = {FERRY_WRITE, f.own, p.seg, (uint64_t)(uintptr_t)p.mem, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f.stream), FERRY_ENOMEM);
    if (!strstr(ferry_last_error(), "FERRY_SIM_REFUSE") || !strstr(ferry_last_error(), what))
        fail_msg("the refused submit's message \"%s\" does not name the refusal of %s", ferry_last_error(), what);
    assert_int_equal(f.sim->stream_query(f.stream), 0); /* nothing enqueued */
    assert_int_equal(pattern_check(p.mem, LEN, PEER_SEED, 0), -1);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f.stream), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    assert_int_equal(pattern_check(p.mem, LEN, FILL_SEED, 0), -1);
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    peer_stop(&p);
    fixture_stop(&f);
}

static void bounce_buffer_allocation_refused(void **state)
{
    (void)state;
    setenv("FERRY_SIM_REFUSE", "host_alloc:2", 1);
    bounced_setup_refused("host_alloc(4194304)"); /* BOUNCE_MIN */
}

static void flag_page_allocation_refused(void **state)
{
    (void)state;
    setenv("FERRY_SIM_REFUSE", "host_alloc:3", 1);
    bounced_setup_refused("host_alloc(4096)"); /* FLAG_SLOTS words */
}

/* The mark after the copies before a bounced WRITE's transfer is refused
 * (FERRY_SIM_REFUSE=write_flag:1) and the copy out of device memory (job 2)
 * fails on the device.  Before, the job went on without a mark, took the
 * copies as run and sent the bounce buffer's stale bytes (the peer's were
 * overwritten) and the batch ended COMPLETED.  Now a refused mark is an
 * error of the call: the batch ends FAILED naming it, nothing is sent. */
static void bounced_mark_refused(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2", 1);
    setenv("FERRY_SIM_REFUSE", "write_flag:1", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    struct peer p;
    peer_start(&f, &p);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b), 0);
    struct ferry_request q = {FERRY_WRITE, f.own, p.seg, (uint64_t)(uintptr_t)p.mem, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f.stream), FERRY_EIO);
    assert_int_equal(f.sim->stream_sync(f.stream), FERRY_EIO);
    assert_failed(b, FERRY_EIO, "FERRY_SIM_REFUSE");
    if (pattern_check(p.mem, LEN, PEER_SEED, 0) != -1)
        fail_msg("the WRITE whose copy out of device memory failed sent the bounce buffer's bytes");
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    peer_stop(&p);
    fixture_stop(&f);
}

/* The same for the own segment's copies (local_submit): before, the batch
 * ended COMPLETED though its copy failed on the device. */
static void own_mark_refused(void **state)
{
    (void)state;
    setenv("FERRY_SIM_FAIL_COPY", "2", 1);
    setenv("FERRY_SIM_REFUSE", "write_flag:1", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_batch *b;
    assert_int_equal(submit_one(&f, FERRY_WRITE, "sim:0", false, &b), FERRY_EIO);
    assert_int_equal(f.sim->stream_sync(f.stream), FERRY_EIO);
    assert_failed(b, FERRY_EIO, "FERRY_SIM_REFUSE");
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

/* ------------------------------------------------------------ flag slots run out */

#define FLAG_SLOTS 1024 /* stream_internal.h's */
static uint32_t gate;

static void gate_wait(void *arg)
{
    ferry_flag_wait(arg, 1);
}

/* Stream-ordered WRITEs of host memory wait behind a gate on the stream,
 * each with its flag slot.  With one slot left, a bounced WRITE, which
 * needs two (its flag and its mark), is refused; with none left, a WRITE
 * into the own segment (its mark) and another WRITE of host memory (its
 * flag) are.  Each call returns FERRY_EBUSY naming FLAG_SLOTS with nothing
 * enqueued (before, the first two went on with no mark, so a copy that
 * failed would have passed unseen).  Once the gate opens and the transfers
 * end, the same batches take the same submits. */
static void flag_slots_run_out(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f, "sim:0");
    struct peer p;
    peer_start(&f, &p);
    ferry_batch **held = calloc(FLAG_SLOTS + 1, sizeof *held);
    assert_non_null(held);
    for (size_t i = 0; i <= FLAG_SLOTS; i++)
        assert_int_equal(ferry_batch_alloc(f.e, 1, &held[i]), 0);
    gate = 0;
    assert_int_equal(f.sim->stream_host_func(0, f.stream, gate_wait, &gate), 0);
    int rc[FLAG_SLOTS + 1];
    for (size_t i = 0; i < FLAG_SLOTS - 1; i++) {
        struct ferry_request q = {FERRY_WRITE, f.host + i, p.seg, (uint64_t)(uintptr_t)(p.mem + i), 1};
        rc[i] = ferry_batch_submit_on_stream(held[i], &q, 1, "sim:0", f.stream);
    }
    ferry_batch *bounced, *own;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &bounced), 0);
    struct ferry_request q = {FERRY_WRITE, f.own, p.seg, (uint64_t)(uintptr_t)p.mem, LEN};
    int bounced_rc = ferry_batch_submit_on_stream(bounced, &q, 1, "sim:0", f.stream);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", ferry_last_error());
    for (size_t i = FLAG_SLOTS - 1; i <= FLAG_SLOTS; i++) { /* the last slot, then one too many */
        struct ferry_request q1 = {FERRY_WRITE, f.host + i, p.seg, (uint64_t)(uintptr_t)(p.mem + i), 1};
        rc[i] = ferry_batch_submit_on_stream(held[i], &q1, 1, "sim:0", f.stream);
    }
    int own_rc = submit_one(&f, FERRY_WRITE, "sim:0", false, &own);
    ferry_flag_set(&gate, 1);
    for (size_t i = 0; i < FLAG_SLOTS; i++)
        assert_int_equal(rc[i], 0);
    assert_int_equal(rc[FLAG_SLOTS], FERRY_EBUSY);
    assert_int_equal(bounced_rc, FERRY_EBUSY);
    if (!strstr(msg, "1024"))
        fail_msg("the refused submit's message \"%s\" does not say how many wait", msg);
    assert_int_equal(own_rc, FERRY_EBUSY);
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    for (size_t i = 0; i < FLAG_SLOTS; i++)
        assert_int_equal(ferry_batch_wait(held[i], -1), 0);
    assert_int_equal(pattern_check(p.mem, FLAG_SLOTS, DATA_SEED, 0), -1);
    pattern_fill(p.mem, LEN, PEER_SEED, 0);
    struct ferry_request q1 = {FERRY_WRITE, f.host + FLAG_SLOTS, p.seg, (uint64_t)(uintptr_t)(p.mem + FLAG_SLOTS), 1};
    assert_int_equal(ferry_batch_submit_on_stream(held[FLAG_SLOTS], &q1, 1, "sim:0", f.stream), 0);
    assert_int_equal(ferry_batch_submit_on_stream(bounced, &q, 1, "sim:0", f.stream), 0);
    struct ferry_request q2 = {FERRY_WRITE, f.host, f.self, (uint64_t)(uintptr_t)f.own, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(own, &q2, 1, "sim:0", f.stream), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    assert_int_equal(ferry_batch_wait(held[FLAG_SLOTS], -1), 0);
    assert_int_equal(ferry_batch_wait(bounced, -1), 0);
    assert_int_equal(ferry_batch_wait(own, -1), 0);
    assert_int_equal(pattern_check(p.mem, LEN, FILL_SEED, 0), -1);
    for (size_t i = 0; i <= FLAG_SLOTS; i++)
        ferry_batch_free(held[i]);
    free(held);
    ferry_batch_free(bounced);
    ferry_batch_free(own);
    assert_accesses_ended(&f);
    peer_stop(&p);
    fixture_stop(&f);
}

/* ------------------------------------------------------------ a refused host function */

static ferry_stream *fixture_stream;

/* The stream refuses ferry's host function (FERRY_SIM_REFUSE=host_func:N)
 * after a copy of the submit that it accepted and holds (copy job 2,
 * FERRY_SIM_HOLD_COPY): before, the call ended the accesses to the copy's
 * memory at once, so an unregister could return while the copy was still to
 * touch it.  Now the call waits for the stream (stream_synchronize) before
 * it ends them: it may not return before the held copy is let go.  The
 * moment given to the call to return early only makes the old bug visible;
 * the fixed code passes whatever the timing. */
static atomic_int released;

struct held_submit {
    ferry_batch *b;
    struct ferry_request q;
    ferry_engine *destroy;     /* after the call: the batch ends and is freed, then this engine goes */
    int rc;
    int released_seen;
};

static void *submit_in_thread(void *arg)
{
    struct held_submit *h = arg;
    h->rc = ferry_batch_submit_on_stream(h->b, &h->q, 1, "sim:0", fixture_stream);
    if (h->destroy) {
        ferry_batch_wait(h->b, -1);
        ferry_batch_free(h->b);
        ferry_engine_destroy(h->destroy);
    }
    h->released_seen = atomic_load(&released);
    return NULL;
}

static void hold_copy_2(char *path, size_t len)
{
    snprintf(path, len, "/tmp/ferry-stream-faults-hold-%d", (int)getpid());
    unlink(path);
    char hold[300];
    snprintf(hold, sizeof hold, "2:%s", path);
    setenv("FERRY_SIM_HOLD_COPY", hold, 1);
}

/* Submits q while copy job 2 is held (then, with destroy, frees the batch
 * and destroys the engine); returns the call's result. */
static int submit_while_copy_held(struct fixture *f, ferry_batch *b, struct ferry_request q, const char *path,
                                  ferry_engine *destroy)
{
    struct held_submit h = {b, q, destroy, 0, 0};
    fixture_stream = f->stream;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, submit_in_thread, &h), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1; /* the call's chance to return early (the bug), not a measurement */
    bool joined = pthread_timedjoin_np(th, NULL, &until) == 0;
    atomic_store(&released, 1);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    if (!joined)
        pthread_join(th, NULL);
    f->sim->stream_sync(f->stream); /* the held copy has run (into freed memory, with the bug: ASan says so) */
    unlink(path);
    if (!h.released_seen)
        fail_msg("submit_on_stream returned, its accesses ended, while a copy the stream accepted was still held");
    return h.rc;
}

static void own_host_func_refused_after_a_held_copy(void **state)
{
    (void)state;
    char path[128];
    hold_copy_2(path, sizeof path);
    setenv("FERRY_SIM_REFUSE", "host_func:1", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b), 0);
    struct ferry_request q = {FERRY_WRITE, f.host, f.self, (uint64_t)(uintptr_t)f.own, LEN};
    assert_int_equal(submit_while_copy_held(&f, b, q, path, NULL), FERRY_EIO);
    assert_failed(b, FERRY_EIO, "FERRY_SIM_REFUSE");
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    fixture_stop(&f);
}

/* The same for a bounced WRITE (its copy out of device memory) and a
 * bounced READ whose second host function, after the copy into device
 * memory, is refused (the accesses ended when the transfer did). */
static void bounced_host_func_refused_after_a_held_copy(int opcode, const char *refuse)
{
    char path[128];
    hold_copy_2(path, sizeof path);
    setenv("FERRY_SIM_REFUSE", refuse, 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    struct peer p;
    peer_start(&f, &p);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b), 0);
    struct ferry_request q = {opcode, f.own, p.seg, (uint64_t)(uintptr_t)p.mem, LEN};
    int rc = submit_while_copy_held(&f, b, q, path, NULL);
    assert_int_equal(rc, opcode == FERRY_WRITE ? FERRY_EIO : 0);
    assert_int_equal(ferry_batch_wait(b, -1), FERRY_EIO);
    assert_int_equal(pattern_check(p.mem, LEN, PEER_SEED, 0), -1); /* a WRITE sent nothing */
    ferry_batch_free(b);
    assert_accesses_ended(&f);
    peer_stop(&p);
    fixture_stop(&f);
}

/* The engine is destroyed once a refused bounced WRITE's call returned and
 * its batch ended: the bounce buffer the stream may still use (lost) is
 * freed with the runner.  Before the stream was drained on that path, the
 * copy still held wrote into the freed buffer when let go (a
 * heap-use-after-free under ASan; the call returned early in any build). */
static void engine_destroyed_after_a_refused_host_func(void **state)
{
    (void)state;
    char path[128];
    hold_copy_2(path, sizeof path);
    setenv("FERRY_SIM_REFUSE", "host_func:1", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    struct peer p;
    peer_start(&f, &p);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b), 0);
    struct ferry_request q = {FERRY_WRITE, f.own, p.seg, (uint64_t)(uintptr_t)p.mem, LEN};
    assert_int_equal(submit_while_copy_held(&f, b, q, path, f.e), FERRY_EIO);
    f.e = NULL; /* (destroyed) */
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    assert_int_equal(pattern_check(p.mem, LEN, PEER_SEED, 0), -1); /* nothing was sent */
    peer_stop(&p);
    fixture_stop(&f);
}

static void bounced_write_host_func_refused_after_a_held_copy(void **state)
{
    (void)state;
    bounced_host_func_refused_after_a_held_copy(FERRY_WRITE, "host_func:1");
}

static void bounced_read_host_func_refused_after_a_held_copy(void **state)
{
    (void)state;
    bounced_host_func_refused_after_a_held_copy(FERRY_READ, "host_func:2");
}

/* ------------------------------------------------------------ a READ that times out */

/* A target of this test (fake_target.c) that answers its first READ with
 * the header and half the payload, holds the rest until released, then
 * sends it (the initiator gave up on it by then). */
struct late_target {
    struct fake_target ft;
    char *mem;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int released, answering, done; /* answering: a READ came (on whichever connection) */
};

static void late_answer(struct late_target *k, int fd)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    struct wire_header h;
    struct wire_entry e[WIRE_MAX_ENTRIES];
    char name[WIRE_MAX_NAME];
    if (net_read_full(fd, raw, WIRE_HEADER_SIZE) || wire_decode_header(raw, &h) || h.payload_len > sizeof name ||
        net_read_full(fd, name, (size_t)h.payload_len))
        return;
    struct wire_header ack = {.type = WIRE_HELLO_ACK, .id = h.id};
    wire_encode_header(&ack, raw);
    if (net_write_full(fd, raw, WIRE_HEADER_SIZE) || net_read_full(fd, raw, WIRE_HEADER_SIZE) ||
        wire_decode_header(raw, &h) || h.type != WIRE_READ ||
        net_read_full(fd, raw, (size_t)h.nentries * WIRE_ENTRY_SIZE) || wire_decode_entries(raw, &h, e))
        return;
    size_t total = 0;
    for (unsigned i = 0; i < h.nentries; i++)
        total += e[i].len;
    uint8_t *resp = malloc(WIRE_HEADER_SIZE + total + WIRE_TRAILER_SIZE);
    if (!resp)
        return;
    struct wire_header rh = {.type = WIRE_READ_RESP, .id = h.id, .payload_len = total,
                             .flags = h.flags & WIRE_FLAG_TRAILER};
    wire_encode_header(&rh, resp);
    size_t off = WIRE_HEADER_SIZE;
    for (unsigned i = 0; i < h.nentries; i++, off += e[i - 1].len)
        memcpy(resp + off, (const void *)(uintptr_t)e[i].addr, e[i].len);
    if (rh.flags & WIRE_FLAG_TRAILER) {
        wire_encode_trailer(&(struct wire_trailer){0}, resp + off);
        off += WIRE_TRAILER_SIZE;
    }
    size_t half = WIRE_HEADER_SIZE + total / 2;
    pthread_mutex_lock(&k->mu);
    bool first = !k->answering;
    k->answering = 1;
    pthread_mutex_unlock(&k->mu);
    if (first && net_write_full(fd, resp, half) == 0) {
        pthread_mutex_lock(&k->mu);
        while (!k->released)
            pthread_cond_wait(&k->cv, &k->mu);
        pthread_mutex_unlock(&k->mu);
        (void)send(fd, resp + half, off - half, MSG_NOSIGNAL); /* (the initiator may have closed) */
    }
    free(resp);
}

/* Each data connection in turn (the initiator may open several, and send
 * the READ on any that got its HELLO_ACK): one that carries no frame ends
 * when its reads time out, so that the next is served. */
static void serve_late(void *ctx, int fd)
{
    struct late_target *k = ctx;
    struct timeval tv = {.tv_sec = 2};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    late_answer(k, fd);
    pthread_mutex_lock(&k->mu);
    k->done = k->answering;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

/* A bounced READ whose tcp request ends TIMEOUT (FERRY_REQUEST_TIMEOUT_MS
 * passes with half its payload in): its batch ends TIMEOUT, its device
 * memory holds zeros (not a bounce buffer's stale bytes), and the bounce
 * buffer goes back to the runner (FERRY_STREAM_BOUNCE_MB=4: the only one).
 * The next READ (from the peer) takes it; while its copy into device memory
 * is held (copy job 4), the target sends the rest of the timed-out payload.
 * The tcp receiver ends a frame only once it has stopped receiving for it
 * (the inner batch's ferry_batch_wait(-1) waits for that), so none of those
 * bytes may land: the device memory holds the peer's bytes.  (Had the
 * receiver gone on, the late bytes would have landed in the reused buffer
 * only if the peer's had landed first: this catches such a hole in most
 * runs, never fails the right code.) */
static void timed_out_read_leaves_the_reused_bounce_buffer_alone(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "/tmp/ferry-stream-faults-hold-%d", (int)getpid());
    unlink(path);
    char hold[300];
    snprintf(hold, sizeof hold, "4:%s", path);
    setenv("FERRY_SIM_HOLD_COPY", hold, 1);
    setenv("FERRY_REQUEST_TIMEOUT_MS", "1000", 1);
    setenv("FERRY_STREAM_BOUNCE_MB", "4", 1);
    struct fixture f;
    fixture_start(&f, "sim:0");
    struct peer p;
    peer_start(&f, &p);
    struct late_target k = {.mem = malloc(LEN)};
    assert_non_null(k.mem);
    pattern_fill(k.mem, LEN, 77, 0);
    pthread_mutex_init(&k.mu, NULL);
    pthread_cond_init(&k.cv, NULL);
    assert_int_equal(fake_target_start(&k.ft, NULL, 0x1a7e5eedull, k.mem, LEN, NULL, serve_late, &k), 0);
    ferry_segment_t late_seg;
    assert_int_equal(ferry_open_segment(f.e, k.ft.name, &late_seg), 0);
    ferry_batch *b1, *b2;
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b1), 0);
    assert_int_equal(ferry_batch_alloc(f.e, 1, &b2), 0);
    struct ferry_request q1 = {FERRY_READ, f.own, late_seg, (uint64_t)(uintptr_t)k.mem, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b1, &q1, 1, "sim:0", f.stream), 0);
    struct ferry_copy out = {f.after, f.own, LEN};
    assert_int_equal(f.sim->stream_copy(0, f.stream, FERRY_COPY_D2H, &out, 1), 0); /* copy job 3: what the READ left */
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    ferry_batch_wait(b1, -1);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b1, 0, &st), 0);
    assert_int_equal(st.state, FERRY_TIMEOUT);
    char *zeros = calloc(1, LEN);
    assert_non_null(zeros);
    assert_memory_equal(f.after, zeros, LEN);
    struct ferry_request q2 = {FERRY_READ, f.own, p.seg, (uint64_t)(uintptr_t)p.mem, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b2, &q2, 1, "sim:0", f.stream), 0); /* its copy: job 4, held */
    pthread_mutex_lock(&k.mu);
    k.released = 1;
    pthread_cond_broadcast(&k.cv);
    while (k.answering && !k.done) /* (the late bytes are out, or the initiator closed the socket) */
        pthread_cond_wait(&k.cv, &k.mu);
    pthread_mutex_unlock(&k.mu);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(f.sim->stream_copy(0, f.stream, FERRY_COPY_D2H, &out, 1), 0);
    assert_int_equal(f.sim->stream_sync(f.stream), 0);
    unlink(path);
    assert_int_equal(ferry_batch_wait(b2, -1), 0);
    assert_int_equal(pattern_check(f.after, LEN, PEER_SEED, 0), -1);
    ferry_batch_free(b1);
    ferry_batch_free(b2);
    free(zeros);
    assert_accesses_ended(&f);
    peer_stop(&p);
    fixture_stop(&f);
    fake_target_stop(&k.ft);
    free(k.mem);
}

/* ------------------------------------------------------------ main */

struct named_case {
    const char *name;
    CMUnitTestFunction fn;
};

static const struct named_case passing[] = {
    {"write_copy_refused_at_enqueue", write_copy_refused_at_enqueue},
    {"read_copy_refused_at_enqueue", read_copy_refused_at_enqueue},
    {"stream_of_another_device", stream_of_another_device},
    {"write_copy_fails_on_the_device", write_copy_fails_on_the_device},
    {"read_copy_fails_on_the_device", read_copy_fails_on_the_device},
    {"stream_of_another_device_is_refused_in_the_call", stream_of_another_device_is_refused_in_the_call},
    {"own_copy_failure_is_logged", own_copy_failure_is_logged},
    {"bounced_write_copy_fails_on_the_device", bounced_write_copy_fails_on_the_device},
    {"bounced_read_copy_fails_on_the_device", bounced_read_copy_fails_on_the_device},
    {"bounced_mixed_write_copy_fails_on_the_device", bounced_mixed_write_copy_fails_on_the_device},
    {"bounce_buffer_allocation_refused", bounce_buffer_allocation_refused},
    {"flag_page_allocation_refused", flag_page_allocation_refused},
    {"bounced_mark_refused", bounced_mark_refused},
    {"own_mark_refused", own_mark_refused},
    {"flag_slots_run_out", flag_slots_run_out},
    {"own_host_func_refused_after_a_held_copy", own_host_func_refused_after_a_held_copy},
    {"bounced_write_host_func_refused_after_a_held_copy", bounced_write_host_func_refused_after_a_held_copy},
    {"bounced_read_host_func_refused_after_a_held_copy", bounced_read_host_func_refused_after_a_held_copy},
    {"engine_destroyed_after_a_refused_host_func", engine_destroyed_after_a_refused_host_func},
    {"timed_out_read_leaves_the_reused_bounce_buffer_alone", timed_out_read_leaves_the_reused_bounce_buffer_alone},
};
#define COUNT(a) (sizeof(a) / sizeof(a)[0])

static void in_fresh_process(void **state)
{
    assert_int_equal(test_case_in_fresh_process(*state), 0);
}

static int run_list(const char *group, const struct named_case *list, size_t n)
{
    struct CMUnitTest tests[32];
    for (size_t i = 0; i < n && i < COUNT(tests); i++)
        tests[i] = (struct CMUnitTest){list[i].name, in_fresh_process, NULL, NULL, (void *)list[i].name};
    return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--case") == 0) {
        for (size_t i = 0; i < COUNT(passing); i++)
            if (strcmp(argv[2], passing[i].name) == 0) {
                const struct CMUnitTest one[] = {{argv[2], passing[i].fn, NULL, NULL, NULL}};
                return cmocka_run_group_tests_name(argv[2], one, NULL, NULL);
            }
        fprintf(stderr, "no case %s\n", argv[2]);
        return 2;
    }
    return run_list("stream faults", passing, COUNT(passing));
}
