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
 *
 * The cases of host functions refused after a held copy and of a READ that
 * times out are in test_stream_faults_held.c; the set-up both share is in
 * stream_faults_common.h.
 */
#include "stream_faults_common.h"

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
    int fd = mkostemp(path, O_CLOEXEC);
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
    /* host_alloc 1 and 2 are the sim:0 staging pool's (registering `own`):
     * its chunks and its mark words (chained rounds, FERRY_STAGING_CHAIN_BYTES) */
    setenv("FERRY_SIM_REFUSE", "host_alloc:3", 1);
    bounced_setup_refused("host_alloc(4194304)"); /* BOUNCE_MIN */
}

static void flag_page_allocation_refused(void **state)
{
    (void)state;
    setenv("FERRY_SIM_REFUSE", "host_alloc:4", 1); /* after the pool's two and the bounce buffer */
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

/* ------------------------------------------------------------ main */

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
};

int main(int argc, char **argv)
{
    return stream_faults_main(argc, argv, "stream faults", passing, COUNT(passing));
}
