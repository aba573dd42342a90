/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_stream_faults_held.c — more error paths of stream-ordered submits on
 * the strict sim device (split from test_stream_faults.c, whose header says
 * what every case must show): the stream refuses ferry's host function after
 * a copy of the submit that it accepted and holds (FERRY_SIM_HOLD_COPY), and
 * a bounced READ times out while its target holds the rest of the payload,
 * then the next READ reuses the bounce buffer.
 *
 * Each case runs in a fresh process of this program (--case NAME): sim copy
 * jobs are numbered from 1 in the order a process makes them.  Nothing here
 * depends on timing: the bounded waits only keep a broken run from hanging.
 */
#include "stream_faults_common.h"

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
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
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
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
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

static const struct named_case passing[] = {
    {"own_host_func_refused_after_a_held_copy", own_host_func_refused_after_a_held_copy},
    {"bounced_write_host_func_refused_after_a_held_copy", bounced_write_host_func_refused_after_a_held_copy},
    {"bounced_read_host_func_refused_after_a_held_copy", bounced_read_host_func_refused_after_a_held_copy},
    {"engine_destroyed_after_a_refused_host_func", engine_destroyed_after_a_refused_host_func},
    {"timed_out_read_leaves_the_reused_bounce_buffer_alone", timed_out_read_leaves_the_reused_bounce_buffer_alone},
};

int main(int argc, char **argv)
{
    return stream_faults_main(argc, argv, "stream faults held", passing, COUNT(passing));
}
