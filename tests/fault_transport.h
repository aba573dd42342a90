/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fault_transport.h — "fault", a test-only transport that wraps tcp and
 * injects faults on chosen requests: it fails their frames, refuses their
 * pieces, or holds frames until the test releases them (completion delayed
 * as long as the test wants; closing the segment or destroying the engine
 * then cancels them).  It is registered like any transport, with one line:
 * fault_transport_register() before the engines that use it are created.
 * Both sides must offer "fault" (it speaks tcp's protocol underneath).
 * Rules are process-wide; set them from the test's thread between batches.
 */
#ifndef FERRY_TEST_FAULT_TRANSPORT_H
#define FERRY_TEST_FAULT_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

/* Adds the "fault" table to the transport registry (idempotent). */
void fault_transport_register(void);

/* Every frame carrying a piece of request `request` (its index in its batch)
 * ends with err (e.g. FERRY_EIO) without being sent.  err 0: no such rule. */
void fault_fail_request(uint32_t request, int err);
/* The pieces of request `request` are reported refused as by the target
 * (FERRY_ERANGE) when their frame ends; the frame is sent whole, so its other
 * pieces land.  (uint32_t)-1: no such rule. */
void fault_refuse_request(uint32_t request);
/* on: data frames are held, not sent, until fault_release(). */
void fault_hold(int on);
/* Frames held now. */
size_t fault_held(void);
/* Sends every held frame (and stops holding). */
void fault_release(void);
/* Notification frames handed to the transport since the last reset. */
size_t fault_notifies(void);
/* Clears every rule and counter (held frames must have been released or
 * cancelled). */
void fault_reset(void);

#endif
