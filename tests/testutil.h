/* SPDX-License-Identifier: Apache-2.0 */
/*
 * testutil.h — helpers shared by ferry's tests: skip with a reason, patterns,
 * and a target engine running in a forked child process.
 */
#ifndef FERRY_TESTUTIL_H
#define FERRY_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry.h"

/* Runs this test program again in a child process as `PROG --case name`
 * (its main dispatches that to the one case), for cases whose faults or
 * global state must not reach the others.  Returns its exit status (0: the
 * case passed), or -1 when it did not exit normally. */
int test_case_in_fresh_process(const char *name);

/* Called in a child right after fork() (async-signal-safe: the parent may
 * have threads), with parent = the forking process's getpid() taken before
 * the fork: the child gets SIGKILL when the thread that forked it ends
 * (PR_SET_PDEATHSIG, kept across exec), or _exits at once if the parent is
 * already gone.  So a child a failing test leaves behind does not hold
 * ctest's output pipe open until the test's timeout.  Not for a child that
 * must outlive its parent, nor one that changes its credentials (that
 * clears the signal). */
void test_child_dies_with_parent(pid_t parent);

/* A host name with two loopback addresses or more ("ferry-two.test": ::1
 * then 127.0.0.1, or 127.0.0.2 then 127.0.0.1 without an IPv6 loopback;
 * getaddrinfo may sort them), for tests of connecting to every address of
 * a name.  Made as a hosts entry in a mount namespace of this process's
 * own (root only: unshare(CLONE_NEWNS), / made private first so nothing
 * outside sees it, a copy of /etc/hosts with the entry bound over it);
 * else "localhost" where it has two addresses; else NULL with why[] saying
 * why.  Call from main before any thread starts (unshare needs one). */
const char *test_two_address_name(char *why, size_t cap);

/* Binds a file holding text over target (an /etc file) as this process
 * alone sees it: only inside the private mount namespace that
 * test_two_address_name made (-1 with why[] otherwise, nothing bound).
 * umount2(target, 0) undoes it.  Returns 0 or -1 with why[]. */
int test_bind_private_file(const char *target, const char *text, char *why, size_t cap);

/* Prints "SKIPPED: reason" and exits 77 (ctest shows the test as skipped). */
void test_skip(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* The device memory a test moves, from the environment, so that one test
 * runs on the sim device here and on GPUs on the GPU machine:
 * FERRY_TEST_DEVICE (default "sim:0") the initiator's;
 * FERRY_TEST_TARGET_DEVICE (e.g. "cuda:1" on a host with two GPUs) the
 * target's, default the initiator's; FERRY_TEST_OTHER_DEVICE a second
 * device of the initiator's host, NULL when unset. */
const char *test_device_location(void);
const char *test_target_location(void);
const char *test_other_location(void);

/* Fills / checks a position-dependent pattern: word i of the range holds a hash
 * of (seed, base_pos + 8*i).  check returns the byte offset of the first
 * mismatch, or -1. */
void pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t base_pos);
long pattern_check(const void *buf, size_t len, uint64_t seed, uint64_t base_pos);

/* Fills / checks bytes that depend on position and seed, byte by byte (any
 * length and alignment; the device tests' pattern).  check returns 1 when
 * all of buf matches, else 0. */
void bytes_fill(void *buf, size_t len, unsigned seed);
int bytes_check(const void *buf, size_t len, unsigned seed);

/* Device memory for the staging tests, on device 0 of ops: *dev, len bytes
 * holding host's; *gone, gone_len bytes allocated and freed again (a copy
 * from it fails on the device).  0, or the failing call's FERRY_E* code. */
struct ferry_device_ops;
int test_device_span(const struct ferry_device_ops *ops, const void *host, size_t len, size_t gone_len, char **dev,
                     char **gone);

/* A target engine in a child process (its config comes from FERRY_* env
 * variables at fork time, e.g. FERRY_LOCAL_SERVER_NAME): it registers `len` bytes of `location`
 * memory ("cpu" or "sim:0" ...), filled with pattern(seed, 0), remote accessible,
 * and writes "name addr" to the parent.  It then serves until killed. */
struct child_target {
    pid_t pid;
    char name[128];
    uint64_t addr;
    uint64_t len;
    int ctl_fd;              /* parent end of the control pipe */
};
int child_target_start(struct child_target *t, size_t len, const char *location, uint64_t seed);
/* Asks the child to check that [off, off+len) holds pattern(seed, off);
 * returns the child's answer (-1 ok, else first bad offset) or -2 on error. */
long child_target_check(struct child_target *t, uint64_t off, uint64_t len, uint64_t seed);
/* Asks the child for received notifications; copies the first into buf. Returns
 * its length, or -1 when none. */
long child_target_notification(struct child_target *t, char *buf, size_t max);
/* Asks the child to unregister its buffer (the memory stays mapped).
 * Returns the child's ferry_unregister_memory result. */
int child_target_unregister(struct child_target *t);
/* Asks the child to register its buffer again (after child_target_unregister).
 * Returns the child's ferry_register_memory result. */
int child_target_register(struct child_target *t);
/* Asks the child to unregister its buffer and free its memory.  Returns the
 * child's ferry_unregister_memory result (the memory is freed when 0). */
int child_target_release(struct child_target *t);
/* After child_target_release: the child allocates a new buffer of the same
 * length and location, fills it with pattern(seed, 0) and registers it;
 * t->addr becomes its address (the allocator may reuse the old one).
 * Returns 0 or the child's failing ferry_* result (-1: no answer). */
int child_target_renew(struct child_target *t, uint64_t seed);
/* Asks the child to fill its whole buffer with pattern(seed, 0) (through the
 * device layer).  Returns the child's ferry_mem_copy result. */
int child_target_fill(struct child_target *t, uint64_t seed);
/* Fault injection: the child frees its buffer's memory but keeps it
 * registered, so its later device copies to it fail.  Returns 0. */
int child_target_free_device_memory(struct child_target *t);
/* Asks the child to destroy its engine and exit normally (so its atexit work,
 * such as writing a FERRY_TRACE file, is done) and waits for it.  Returns its
 * wait status, or -1. */
int child_target_quit(struct child_target *t);
void child_target_kill(struct child_target *t);
/* Kills t's process and starts a new target in its place on the same
 * handshake port: FERRY_LOCAL_SERVER_NAME is 127.0.0.1:PORT for it (and unset
 * after), a name also written into asked.  Returns child_target_start's
 * result. */
int child_target_restart(struct child_target *t, size_t len, const char *location, uint64_t seed,
                         char asked[64]);

/* Starts an engine offering `protocols` (NULL: the default set) with
 * VAR=value in the environment, and destroys it again if it started; VAR is
 * unset afterwards.  Returns ferry_engine_create's result (when it failed,
 * ferry_last_error() still says why). */
int test_engine_start_with(const char *protocols, const char *var, const char *value);
/* NULL when such an engine refuses to start with FERRY_EINVAL and a message
 * that names VAR, else what happened instead (a static buffer).  Tests call
 * it through assert_knob_refused. */
const char *test_knob_refusal(const char *protocols, const char *var, const char *value);
#define assert_knob_refused(protocols, var, value)                                                               \
    do {                                                                                                           \
        const char *knob_why_ = test_knob_refusal((protocols), (var), (value));                                    \
        if (knob_why_)                                                                                             \
            fail_msg("%s", knob_why_);                                                                             \
    } while (0)

/* Reads one line from fd (byte by byte, so nothing past the newline is
 * consumed) into buf without the newline.  0, or -1 at EOF/error. */
int test_read_line(int fd, char *buf, size_t max);

/* The body of the ferry_test_target program that child_target_start execs
 * (a fresh process, since device drivers do not survive fork): serves the
 * control protocol on fd.  Never returns. */
void child_target_serve(int fd, size_t len, const char *location, uint64_t seed) __attribute__((noreturn));

/* What this process holds: its threads (/proc/self/task) and open
 * descriptors (/proc/self/fd, without the one that reads it). */
struct census {
    int threads, fds;
};
struct census census_now(void);

/* census_now once it equals want, or after limit_ms (a bound that keeps a
 * test from hanging, not a measurement): a thread pthread_join returned for
 * may still be listed in /proc/self/task for a moment, so a count taken at
 * once can be one off either way.  The caller compares what it returns. */
struct census census_settled(struct census want, unsigned limit_ms);

/* Stops process pid (SIGSTOP) and returns 0 once every one of its threads is
 * stopped (state T in /proc/pid/task/N/stat), -1 if that does not happen
 * within 10 s.  kill() returns before the stop takes effect: a thread that
 * is running, or waiting for a CPU on a loaded host, goes on until it next
 * enters the kernel, so a target "stopped" by kill() alone can still answer
 * a frame sent right after (test_trace's held batch was acknowledged so
 * under load).  Works for any process, not only the caller's children. */
int test_stop_process(pid_t pid);

/* Descriptors: those open in this process now, marked in open[] (numbers
 * from TEST_MAX_FD on are not looked at). */
#define TEST_MAX_FD 4096
void test_fds_open(bool open[TEST_MAX_FD]);
/* Prints each descriptor open now and not in before that lacks FD_CLOEXEC
 * (naming what it is) and returns how many there are; with inet_only,
 * only IPv4 / IPv6 sockets are counted (the others are printed as a note). */
int test_fds_not_cloexec(const bool before[TEST_MAX_FD], bool inet_only);

#endif
