/* SPDX-License-Identifier: Apache-2.0 */
/*
 * net.h — small socket helpers shared by the handshake and the tcp transport:
 * host:port parsing (IPv4, IPv6 as [addr]:port), listening with automatic
 * port choice, connecting with a deadline, and full reads/writes that survive
 * EINTR and short transfers.
 */
#ifndef FERRY_NET_H
#define FERRY_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Monotonic clock in nanoseconds / milliseconds. */
uint64_t now_ns(void);
static inline uint64_t now_ms(void) { return now_ns() / 1000000u; }

/* Splits "host:port" or "host" into host (NUL-terminated, at most hostlen-1
 * chars) and *port (0 if absent).  IPv6 addresses are written "[addr]:port"
 * or "[addr]" (the reference engine's form), or bare "addr" without a port.
 * A bare IPv6 address followed by ":port" is taken as host and port where
 * the whole is no address ("::1:15000", "fe80::1%eth0:7": the reference
 * reads them so, and vLLM writes them), and refused as ambiguous where it is
 * one too ("::1:8080": the address ::1:8080, or ::1 port 8080?), naming
 * both bracketed forms.  host gets the address without brackets.  Returns 0
 * or FERRY_EINVAL. */
int net_split_hostport(const char *name, char *host, size_t hostlen, int *port);

/* Is h, of fewer than max bytes, a host as a peer's endpoint may name it: a
 * host name, an IPv4 address, or an IPv6 address (bare, as a listener on an
 * IPv6 host describes itself; an optional %scope)?  Endpoint decoders of
 * every transport check with it, so a hostile descriptor's host text never
 * reaches a connect or a log line. */
bool net_host_text_ok(const char *h, size_t max);

/* Writes "host:port", or "[host]:port" for an IPv6 address, into out.
 * Returns 0 or FERRY_EINVAL (does not fit). */
int net_format_hostport(char *out, size_t max, const char *host, int port);

/* Listens on host:port (TCP, SO_REUSEADDR).  If port is 0 or already taken, a
 * free port is chosen.  A host name's look-up must end within resolve_ms
 * (FERRY_ETIMEDOUT naming the host and "name resolution"; an address given
 * as text needs none).  Stores the bound port in *bound.  Returns the fd or a
 * negative FERRY_E* code. */
int net_listen(const char *host, int port, unsigned resolve_ms, int *bound);

/* Connects to host:port before deadline_ns (monotonic, see now_ns): tries
 * every address getaddrinfo gives for host, the IPv4 ones first (the one
 * net_listen binds for that name is among them), each family in the
 * resolver's order, each within an equal share of the time left (the
 * last with all of it), until one answers; then, while time is left, the
 * ones that gave no answer again (a silent address gets the time the
 * others' refusals left, as it would alone).  A deadline already past fails
 * at once, before any look-up or connect.  Returns the fd (blocking mode,
 * TCP_NODELAY set, close-on-exec) or FERRY_ETIMEDOUT (the deadline passed)
 * / FERRY_ECONN (no such host, or every address refused), the detail naming
 * every address tried and why it failed.  The look-up shares the deadline:
 * an address given as text needs none; a name's look-up runs on a thread
 * of ferry's (an idle one, else a new one: none waits behind another), and
 * one with no answer by the deadline fails FERRY_ETIMEDOUT naming the host
 * and "name resolution" (the look-up left behind is freed by its thread
 * when getaddrinfo returns; while 64 such run, a name fails at once,
 * FERRY_ETIMEDOUT saying so). */
int net_connect_deadline(const char *host, int port, uint64_t deadline_ns);
/* net_connect_deadline(host, port, net_deadline(timeout_ms)). */
int net_connect(const char *host, int port, unsigned timeout_ms);

/* host's addresses (a name looked up as net_connect_deadline does, by
 * deadline_ns; an address given as text read at once), port in each, for
 * callers that connect through a library (curl).  Returns 0 with *res (free
 * with freeaddrinfo), FERRY_ETIMEDOUT ("name resolution", naming the host)
 * or FERRY_ECONN. */
struct addrinfo;
int net_lookup(const char *host, int port, uint64_t deadline_ns, struct addrinfo **res);

/* Sets SO_RCVTIMEO and SO_SNDTIMEO (0 = none). */
void net_set_timeouts(int fd, unsigned recv_ms, unsigned send_ms);

/* Makes a TCP connection whose peer vanished (host down, cable cut, a
 * process frozen with its kernel gone) fail within about dead_s seconds,
 * even while nothing is sent: keepalive probes after dead_s/2 of silence,
 * four more over the rest, and TCP_USER_TIMEOUT dead_s for data the peer
 * never acknowledges.  A live peer's kernel answers the probes, so a slow
 * or stopped process is not taken for dead by them while nothing waits to
 * reach it; but one that stops reading while this side has bytes queued
 * for it (its receive buffer full, the window shut) for dead_s is: the
 * kernel counts unanswered window as unacknowledged data for
 * TCP_USER_TIMEOUT and fails the connection ETIMEDOUT (seen on Linux 6.x
 * with a 2 s timeout: failed after 3 s; an idle connection to a peer that
 * reads nothing stayed up).  dead_s 0: leaves the socket as it is.  Not a TCP socket (AF_UNIX): does nothing. */
void net_set_keepalive(int fd, unsigned dead_s);

/* Reads exactly len bytes.  Returns 0, or FERRY_ECONN (peer closed / reset),
 * FERRY_ETIMEDOUT.  The socket's SO_RCVTIMEO (none: no bound) bounds the
 * whole call, not each piece: read once the call first has to wait, it is
 * one deadline for all the bytes still missing, so a peer that drips a byte
 * at a time cannot stretch the call to a timeout per byte.  Each piece is
 * taken with a non-blocking recv and a wait is a poll: a call whose bytes
 * are there costs one recv and no clock or getsockopt. */
int net_read_full(int fd, void *buf, size_t len);
/* The same with one absolute deadline (monotonic ns, see now_ns) for the
 * whole transfer, however the peer slices it: a peer that sends one byte at
 * a time cannot stretch it.  FERRY_ETIMEDOUT once the deadline passes and
 * the socket has nothing more to give or take (bytes the socket has or
 * takes at once move even past it: the first piece is tried before the
 * clock is read, so a call that need not wait costs no poll).
 * Independent of SO_RCVTIMEO / SO_SNDTIMEO. */
int net_read_full_deadline(int fd, void *buf, size_t len, uint64_t deadline_ns);
int net_writev_full_deadline(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns);
int net_write_full_deadline(int fd, const void *buf, size_t len, uint64_t deadline_ns);
/* now_ns() + ms milliseconds. */
uint64_t net_deadline(unsigned ms);

/* Reads and throws away len bytes (payload of a refused frame), SO_RCVTIMEO
 * bounding the whole call as in net_read_full. */
int net_discard(int fd, uint64_t len);
/* Writes the whole iovec array (modified in place). Returns 0 or as above,
 * the socket's SO_SNDTIMEO bounding the whole call (from its first wait: a
 * peer that reads a little at a time, or stops reading with its window
 * shut while its kernel still answers keepalives, cannot stretch it). */
int net_writev_full(int fd, struct iovec *iov, int iovcnt);
int net_write_full(int fd, const void *buf, size_t len);

#endif
