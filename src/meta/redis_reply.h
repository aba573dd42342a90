/* SPDX-License-Identifier: Apache-2.0 */
/*
 * redis_reply.h — what ferry reads of a Redis server's replies (redis.c runs
 * the commands): the bytes of one reply through hiredis's reader, with the
 * caps and checks ferry adds, and the meaning of each command's reply.
 * Pure functions of the bytes and replies, so tests/fuzz/fuzz_redis_reply.c
 * reaches them in-process.  Built with FERRY_HAVE_REDIS.
 */
#ifndef FERRY_META_REDIS_REPLY_H
#define FERRY_META_REDIS_REPLY_H

#include <hiredis/hiredis.h>
#include <stddef.h>

/* Feeds n bytes the server sent for one command into rd (*got counts the
 * reply's bytes so far; 0 before the first call).  0 with *reply NULL (more
 * to come) or the whole reply (the caller frees it with freeReplyObject);
 * FERRY_EPROTO for a reply whose type none of ferry's commands gets (an
 * array: hiredis would first allocate the element count the server
 * announces), one over the cap of a descriptor plus framing, one that is
 * malformed, or bytes after the one reply.  The detail names url. */
int redis_reply_feed(const char *url, redisReader *rd, size_t *got, const char *buf, size_t n, void **reply);

/* Is r the reply Redis gives `command` when it succeeds: of RESP type `type`
 * (REDIS_REPLY_*) and, with status, that very text?  0 or FERRY_EPROTO with
 * the reply quoted sanitized. */
int redis_reply_expect(const char *url, const char *command, const redisReply *r, int type, const char *status);

/* A GET reply for segment name: the descriptor text (*json malloc'd, NUL-
 * terminated, *len); FERRY_ENOSEG for nil or an error reply (quoted
 * sanitized), FERRY_EPROTO for any other type (WRONGTYPE: not a string). */
int redis_reply_get(const redisReply *r, const char *name, char **json, size_t *len);

#endif
