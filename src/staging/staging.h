/* SPDX-License-Identifier: Apache-2.0 */
/*
 * staging.h — moving device memory through pinned host chunks, pipelined.
 *
 * When no transport can touch a request's local memory (NPU memory, a GPU
 * without GPUDirect, the sim device), its frames go through a staging pool
 * of the memory's device: a fixed set of pinned host chunks, allocated and
 * registered once (when the first memory of that device is registered), each
 * with its own device stream.
 *
 *   WRITE: gather the frame's device pieces into a chunk with one batched
 *          D2H copy, then hand a rewritten frame (pieces point into the
 *          chunk) to the transport.  The copy of chunk i+1 runs while chunk i
 *          is on the wire.
 *   READ:  hand a frame pointing into a chunk to the transport; when it
 *          arrives, scatter it to the device with one batched H2D copy, and
 *          only then end the original frame.
 *
 * Chunks that become ready together (frames submitted together, READ
 * payloads that arrived together) go to the device as one group: one
 * batched copy for up to 2 chunks (FERRY_STAGING_GROUP, up to 16; then
 * the first group of those ready at once takes up to
 * FERRY_STAGING_GROUP_FIRST, auto: one frame unless two fit in half a
 * chunk, so the wire starts early), scatters up to 4 MiB
 * (FERRY_STAGING_READ_GROUP_BYTES), waited for once.  With mark streams
 * (off by default) the gathers ready together go one after another on
 * one stream, each group retired by a mark the device writes after it (so
 * each frame goes to the wire as soon as its own copies are done);
 * scatters, and every group without marks, on its first chunk's stream.
 * A group that fails goes again chunk by chunk, so a bad address fails its
 * own frame only.
 *
 * Devices without a gather kernel gather small blocks on the device instead
 * (aggregate.h): D2D into a device buffer, one D2H per chunk; READ the
 * mirror.  On by default where the device says so (NPU, blocks < 2 MiB);
 * FERRY_STAGING_AGGREGATE selects it anywhere.  Pieces start at multiples
 * of the device's copy alignment in a chunk (64 bytes on NPU).
 *
 * Copies are issued by the thread that brings the work (the submitting
 * thread its gathers, the transport thread that received a READ its
 * scatter; one at a time), so they start without a sleeping thread's
 * wake-up on the path; a pool's one worker thread waits for them, retires
 * them, and issues what waited for a free chunk.  When every chunk is busy,
 * frames wait their turn in FIFO order (bounded by their deadlines), never
 * fail.
 *
 * An original frame ends only after every copy to or from its device
 * memory has completed (a failed copy's stream is drained before the frame
 * fails): the engine holds each request's access to its memory until then,
 * and ferry_unregister_memory waits for that, so no copy touches device
 * memory after unregister returned.
 */
#ifndef FERRY_STAGING_H
#define FERRY_STAGING_H

#include <stdbool.h>
#include <stddef.h>

#include "device/device.h"
#include "transport/transport.h"

struct staging_pool;

/* Hands a frame (already rewritten to host memory) to its transport. */
typedef void (*staging_send_fn)(void *ctx, struct xfer_frame *f);

/* Creates a pool of nchunks pinned chunks of chunk_size bytes for device dev
 * of kind ops, and starts its worker.  base and len receive the host range the
 * chunks occupy, for registration with the transports.  0 or FERRY_E*. */
int staging_pool_create(const struct ferry_device_ops *ops, int dev, size_t chunk_size, unsigned nchunks,
                        staging_send_fn send, void *send_ctx, struct staging_pool **out, void **base,
                        size_t *len);

/* How many chunks of what size a pool of `chunks` x `chunk_size` pinned
 * bytes (FERRY_STAGING_CHUNKS x FERRY_STAGING_CHUNK_SIZE, the memory bound)
 * has when no frame exceeds frame_max bytes (the slice size): chunks larger
 * than two frames are cut into frame-sized ones, so the same memory holds
 * more frames in flight (16 x 2 MiB with 1 MiB slices: 32 x 1 MiB, two
 * 1,024 x 16 KiB batches, not one; a chunk is held from its gather until
 * the wire is done with it, so a pool of 16 frames capped 4 threads' staged
 * 16 KiB x 1,024 over TCP at ~15 GB/s, 32 reach 21-24 on 2 x H200:
 * docs/BENCHMARKS.md, h16v), at most STAGING_POOL_CHUNKS_MAX chunks (each
 * has a device stream).  frame_max 0: as given. */
#define STAGING_POOL_CHUNKS_MAX 256u
void staging_pool_shape(size_t chunk_size, unsigned chunks, size_t frame_max, size_t *out_size, unsigned *out_n);

/* Stops the worker (frames still waiting end FERRY_ECANCELED) and frees. */
void staging_pool_destroy(struct staging_pool *p);

/* Largest frame (bytes) a chunk holds; slicing must not exceed it. */
size_t staging_pool_chunk_size(const struct staging_pool *p);
/* Whether small blocks go through a device buffer (aggregate.h): then a
 * few large frames cost less than many small ones (one D2H each), and the
 * engine does not cut a submit into more frames for the transport's spread. */
bool staging_pool_aggregates(const struct staging_pool *p);
/* Whether the pool's worker sleeps (waits to be woken) right now: for tests
 * of what a submitting thread does then (FERRY_STAGING_ISSUER_RETIRE_US). */
bool staging_pool_worker_asleep(struct staging_pool *p);

/* Queues a frame whose pieces' local pointers are device memory of this
 * pool's device.  Asynchronous; f->complete is called exactly once. */
void staging_submit(struct staging_pool *p, struct xfer_frame *f);
/* The same for frames linked through f->next (the frames of one submit):
 * queued together, so their copies can go as one group. */
void staging_submit_list(struct staging_pool *p, struct xfer_frame *head);

#endif
