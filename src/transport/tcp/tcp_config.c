/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp_config.c — the tcp transport's knobs (FERRY_TCP_*, listed in
 * common/config.c): each read once when an engine starts, a bad value
 * refused with FERRY_EINVAL naming it, and the defaults that scale with
 * the cores the process may run on.  No state of its own.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "spin.h"
#include "transport/tcp/tcp.h"

#define GROW_TOTAL ((uint64_t)32 << 20) /* in flight, spread over the most connections a peer may open */
#define GROW_MAX ((uint64_t)8 << 20)    /* the most in flight on each connection before another opens */
#define INLINE_BYTES ((uint64_t)512 << 10) /* FERRY_TCP_INLINE_BYTES's default */

/* One per core, 4 to 16: on 2 cores 4 (CI); 16 CPUs 16 (8 left 15 % of
 * them idle, 32 moved 26 % more); 32 CPUs 16, the best of 2, 8 and 16
 * measured there (docs/BENCHMARKS.md). */
unsigned tcp_auto_max_connections(long cores)
{
    return cores < 4 ? 4 : cores > 16 ? 16 : (unsigned)cores;
}

/* GROW_TOTAL / max_conns, from one slice to GROW_MAX (or the slice, if
 * larger): with 4 connections at most (up to 4 cores) 8 MiB, as before; with
 * 16, 2 MiB, so 4 threads of 128 x 64 KiB open them all. */
uint64_t tcp_auto_grow_bytes(unsigned max_conns, uint64_t slice_size)
{
    uint64_t g = GROW_TOTAL / (max_conns ? max_conns : 1);
    if (g > GROW_MAX)
        g = GROW_MAX;
    return g < slice_size ? slice_size : g;
}

/* A count knob: unset, empty or "auto": `dflt`; else lo to hi. */
static int env_count(const char *name, unsigned lo, unsigned hi, unsigned dflt, const char *wanted, unsigned *out)
{
    uint64_t v = dflt;
    int rc = config_env_number(name, true, lo, hi, wanted, &v);
    *out = (unsigned)v;
    return rc < 0 ? rc : 0;
}

/* FERRY_TCP_MAX_CONNECTIONS: unset, empty or "auto": tcp_auto_max_connections
 * of the cores the process may run on; else 1-64. */
static int tcp_max_connections(unsigned *out)
{
    return env_count("FERRY_TCP_MAX_CONNECTIONS", 1, 64, tcp_auto_max_connections(usable_cores()), "auto or 1-64",
                     out);
}

/* FERRY_TCP_GROW_BYTES: unset, empty or "auto": tcp_auto_grow_bytes; else
 * bytes, 64 KiB to 1 GiB. */
static int tcp_grow_bytes(unsigned max_conns, uint64_t slice_size, uint64_t *out)
{
    int rc = config_env_number("FERRY_TCP_GROW_BYTES", true, 64u << 10, 1u << 30, "auto or bytes, 65536-1073741824",
                               out);
    if (rc == 1)
        *out = tcp_auto_grow_bytes(max_conns, slice_size);
    return rc < 0 ? rc : 0;
}

/* FERRY_TCP_INLINE_BYTES: unset, empty or "auto": INLINE_BYTES, or 0 with
 * a spread (the senders write a submit's frames in parallel); else 0 to 1
 * GiB. */
static int tcp_inline_bytes(unsigned spread, uint64_t *out)
{
    int rc = config_env_number("FERRY_TCP_INLINE_BYTES", true, 0, 1u << 30, "auto or bytes, 0-1073741824", out);
    if (rc == 1)
        *out = spread > 1 ? 0 : INLINE_BYTES;
    return rc < 0 ? rc : 0;
}

/* 1 below 8 cores (the threads of 2 frames would share the cores the
 * copies need: one frame on one connection, written inline, measured best
 * on 2 vCPUs), 2 from 8, 4 from 16 (4 KiB x 128 with one thread on 16
 * CPUs: 0.76-0.87x one iperf3 stream as one frame, 1.11-1.12x as 4;
 * docs/BENCHMARKS.md). */
unsigned tcp_auto_spread(long cores)
{
    return cores >= 16 ? 4 : cores >= 8 ? 2 : 1;
}

/* READs as WRITEs (docs/BENCHMARKS.md, h16x). */
unsigned tcp_auto_spread_read(long cores)
{
    return tcp_auto_spread(cores);
}

/* FERRY_TCP_SPREAD: unset, empty or "auto": tcp_auto_spread; else 1-16. */
static int tcp_spread(unsigned *out)
{
    return env_count("FERRY_TCP_SPREAD", 1, 16, tcp_auto_spread(usable_cores()), "auto or 1-16", out);
}

/* FERRY_TCP_SPREAD_READ: unset, empty or "auto": FERRY_TCP_SPREAD where
 * that is set to a number (the spread of both directions), else
 * tcp_auto_spread_read; else 1-16. */
static int tcp_spread_read(unsigned write_spread, unsigned *out)
{
    const char *both = getenv("FERRY_TCP_SPREAD");
    bool set = both && *both && strcmp(both, "auto") != 0;
    return env_count("FERRY_TCP_SPREAD_READ", 1, 16, set ? write_spread : tcp_auto_spread_read(usable_cores()),
                     "auto or 1-16", out);
}

/* 8 from 16 cores, else as the direction's spread.  A staged frame's socket
 * copies read bytes a device wrote, cold in the CPU's caches, at ~5 GB/s a
 * connection on the GPU host (a 512 KiB frame 106 us on the sender, 141
 * from its header to its payload at the target), so a batch's bytes cross
 * sooner on more connections at once: one H200 under MPS, 16 CPUs, 16 KiB
 * x 128 with one thread, 8 frames of 256 KiB on 8 connections moved WRITE
 * 5.4-6.9 GB/s against 4.5-5.0 as 4 of 512 KiB, READ 5.0-6.1 against
 * 4.9-5.5 (batch p50 WRITE 295-369 us against 393-434), for 1-2.5 us more
 * CPU per request; 6 and 12 frames moved less, 16 cost 40 % more CPU
 * (docs/BENCHMARKS.md, h16e). */
unsigned tcp_auto_spread_staged(long cores)
{
    return cores >= 16 ? 8 : 0;
}

/* FERRY_TCP_SPREAD_STAGED: unset, empty or "auto": the direction's spread
 * where FERRY_TCP_SPREAD is set to a number (0), else
 * tcp_auto_spread_staged; else 1-16. */
static int tcp_spread_staged(unsigned *out)
{
    const char *both = getenv("FERRY_TCP_SPREAD");
    bool set = both && *both && strcmp(both, "auto") != 0;
    return env_count("FERRY_TCP_SPREAD_STAGED", 1, 16, set ? 0 : tcp_auto_spread_staged(usable_cores()),
                     "auto or 1-16", out);
}

/* SO_SNDBUF / SO_RCVBUF from 8 cores (8-16 connections): the kernel's own
 * (grown to 4-6 MiB a socket) keep 16 connections x ~10 MiB in flight, more
 * than the caches hold, so both copies of every byte go to DRAM; 512 KiB
 * (the kernel doubles it) moved write / read 1 MiB x 8 threads 23 / 15 %
 * more on 16 CPUs with 18 % less CPU a MiB on both sides, and 256 KiB more
 * again (+8-14 % over 512 KiB at 64 KiB x 8, 1 MiB x 1 and x 8, in one run);
 * 8 connections, a wake-up per 256 KiB (FERRY_TCP_RCVLOWAT) or the submitter
 * writing every frame were no better (docs/BENCHMARKS.md). */
#define SOCKBUF_MANY_CORES ((uint64_t)256 << 10)

uint64_t tcp_auto_sockbuf(long cores)
{
    return cores >= 8 ? SOCKBUF_MANY_CORES : 0;
}

/* FERRY_TCP_SOCKBUF: unset, empty or "auto": tcp_auto_sockbuf of the
 * cores this process may run on; "0": the kernel sizes the socket buffers
 * (and grows them with the traffic); else bytes, 64 KiB to 256 MiB. */
static int tcp_sockbuf(uint64_t *out)
{
    const char *wanted = "auto, 0 (the kernel's) or bytes, 65536-268435456";
    int rc = config_env_number("FERRY_TCP_SOCKBUF", true, 0, 256u << 20, wanted, out);
    if (rc == 1)
        *out = tcp_auto_sockbuf(usable_cores());
    else if (rc == 0 && *out && *out < (64u << 10))
        return ferry_fail(FERRY_EINVAL, "FERRY_TCP_SOCKBUF=\"%llu\": %s", (unsigned long long)*out, wanted);
    return rc < 0 ? rc : 0;
}

/* FERRY_TCP_RCVLOWAT: unset, empty or "auto": 0 (off); else bytes, 0 to
 * 64 MiB, at most a quarter of FERRY_TCP_SOCKBUF when that is set (the
 * receive buffer must hold what the receiver waits for). */
static int tcp_rcvlowat(uint64_t sockbuf, uint64_t *out)
{
    int rc = config_env_number("FERRY_TCP_RCVLOWAT", true, 0, 64u << 20, "auto or bytes, 0-67108864", out);
    if (rc == 1)
        *out = 0;
    if (sockbuf && *out > sockbuf / 4)
        *out = sockbuf / 4;
    return rc < 0 ? rc : 0;
}

/* FERRY_TCP_READ_HANDOFF: unset, empty or "auto": 0 (off: the submitter
 * writes every READ request it can); else bytes, 0 to 1 GiB. */
static int tcp_read_handoff(uint64_t *out)
{
    int rc = config_env_number("FERRY_TCP_READ_HANDOFF", true, 0, 1u << 30, "auto or bytes, 0-1073741824", out);
    if (rc == 1)
        *out = 0;
    return rc < 0 ? rc : 0;
}

/* A held WRITE ack below 8 cores, for frames of up to 256 KiB (a batch of
 * 128 x 4 KiB is two frames of 64 entries): on 2 vCPUs the initiator spent
 * ~10 % less CPU a MiB at 4 KiB x 1 thread (lower in 7 of 8 alternated
 * pairs; the GB/s within the machine's noise); on 16 CPUs no difference
 * (docs/BENCHMARKS.md, t17s). */
#define ACK_HOLD_FEW_CORES ((uint64_t)256 << 10)

uint64_t tcp_auto_ack_hold(long cores)
{
    return cores < 8 ? ACK_HOLD_FEW_CORES : 0;
}

/* FERRY_TCP_ACK_HOLD: unset, empty or "auto": tcp_auto_ack_hold of the
 * cores this process may run on; else bytes, 0 (off: every ack goes at
 * once) to 64 MiB. */
static int tcp_ack_hold(uint64_t *out)
{
    int rc = config_env_number("FERRY_TCP_ACK_HOLD", true, 0, 64u << 20, "auto or bytes, 0-67108864", out);
    if (rc == 1)
        *out = tcp_auto_ack_hold(usable_cores());
    return rc < 0 ? rc : 0;
}

/* A target's connection thread looks for the next frame (and for the rest
 * of a payload) for up to 100 µs before it sleeps: below 8 cores (t17v: a
 * target on the other vCPU of two), and from 8 with the initiator's receiver
 * looking too (t17w, below).  See tcp_serve.c and docs/BENCHMARKS.md. */
#define SERVE_SPIN_US 100u

unsigned tcp_auto_serve_spin_us(long cores)
{
    (void)cores;
    return SERVE_SPIN_US;
}

/* An initiator's receiver looks for the next response before it sleeps, for
 * up to 100 µs, from 8 cores: on the GPU machine's 16 CPUs (a VM whose idle
 * CPUs halt) one thread's READ 4 KiB x 128 moved 5.98-6.56 GB/s with both
 * ends looking against 5.24-6.25 without, WRITE 5.62-5.94 against
 * 5.22-5.62, at about twice the CPU a MiB on each side (docs/BENCHMARKS.md,
 * t17w).  Below 8 cores the two CPUs are better left to the copies and the
 * waiter (off, as before). */
#define RECV_SPIN_US_MANY_CORES 100u

unsigned tcp_auto_recv_spin_us(long cores)
{
    return cores < 8 ? 0 : RECV_SPIN_US_MANY_CORES;
}

/* FERRY_TCP_RECV_SPIN_US: unset, empty or "auto": tcp_auto_recv_spin_us of
 * the cores this process may run on; else 0 (never) to 10000 µs. */
static int tcp_recv_spin(uint64_t *out_ns)
{
    unsigned us;
    int rc = env_count("FERRY_TCP_RECV_SPIN_US", 0, 10000, tcp_auto_recv_spin_us(usable_cores()),
                       "auto or microseconds, 0-10000", &us);
    *out_ns = (uint64_t)us * 1000u;
    return rc;
}

/* FERRY_TCP_SERVE_SPIN_US: unset, empty or "auto": tcp_auto_serve_spin_us
 * of the cores this process may run on; else 0 (never) to 10000 µs. */
static int tcp_serve_spin(uint64_t *out_ns)
{
    unsigned us;
    int rc = env_count("FERRY_TCP_SERVE_SPIN_US", 0, 10000, tcp_auto_serve_spin_us(usable_cores()),
                       "auto or microseconds, 0-10000", &us);
    *out_ns = (uint64_t)us * 1000u;
    return rc;
}

void tcp_set_sockbuf(const struct tcp_transport *t, int fd)
{
    if (!t->sockbuf)
        return;
    int v = (int)t->sockbuf;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
}

int tcp_config_read(uint64_t slice_size, struct tcp_transport *t)
{
    unsigned max_conns = 4, spread = 1, spread_read = 1, spread_staged = 0;
    uint64_t grow_bytes = GROW_MAX, inline_bytes = INLINE_BYTES, sockbuf = 0, rcvlowat = 0, dev_pipe = 0;
    uint64_t read_handoff = 0, ack_hold = 0, serve_spin = 0, recv_spin = 0;
    unsigned ack_on_copy = 0;
    int mrc = tcp_max_connections(&max_conns);
    if (!mrc)
        mrc = tcp_grow_bytes(max_conns, slice_size, &grow_bytes);
    if (!mrc)
        mrc = tcp_spread(&spread);
    if (!mrc)
        mrc = tcp_spread_read(spread, &spread_read);
    if (!mrc)
        mrc = tcp_spread_staged(&spread_staged);
    if (!mrc)
        mrc = tcp_inline_bytes(spread, &inline_bytes);
    if (!mrc)
        mrc = tcp_sockbuf(&sockbuf);
    if (!mrc)
        mrc = tcp_rcvlowat(sockbuf, &rcvlowat);
    if (!mrc)
        mrc = tcp_read_handoff(&read_handoff);
    if (!mrc)
        mrc = tcp_ack_hold(&ack_hold);
    if (!mrc)
        mrc = tcp_device_pipe(&dev_pipe);
    if (!mrc)
        mrc = tcp_ack_on_copy(&ack_on_copy);
    if (!mrc)
        mrc = tcp_serve_spin(&serve_spin);
    if (!mrc)
        mrc = tcp_recv_spin(&recv_spin);
    if (mrc)
        return mrc;
    t->max_conns = max_conns;
    t->grow_bytes = grow_bytes;
    t->inline_bytes = inline_bytes;
    t->spread = spread;
    t->spread_read = spread_read;
    t->spread_staged = spread_staged;
    t->sockbuf = sockbuf;
    t->rcvlowat = rcvlowat;
    t->read_handoff = read_handoff;
    t->ack_hold = ack_hold;
    t->dev_pipe = dev_pipe;
    t->ack_on_copy = ack_on_copy;
    t->serve_spin_ns = serve_spin;
    t->recv_spin_ns = recv_spin;
    return 0;
}
