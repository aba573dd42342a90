/* SPDX-License-Identifier: Apache-2.0 */
/*
 * etcd_reply.h — what ferry reads in etcd's JSON gateway answers (etcd.c
 * makes the calls): the error shape every call may get, a lease grant's ID,
 * a keepalive's TTL, a range's one value; and an HTTP store's entry
 * (http.c).  Pure functions of the reply (no curl), so
 * tests/fuzz/fuzz_etcd_reply.c reaches them in-process.  The store is a
 * peer: every field is checked, and an answer the store never writes (a
 * lease ID of 0, two entries for one key, bytes after the JSON object) is
 * refused with FERRY_EPROTO.
 */
#ifndef FERRY_META_ETCD_REPLY_H
#define FERRY_META_ETCD_REPLY_H

#include <cjson/cJSON.h>
#include <stddef.h>

/* A lease ID as ferry pastes it into requests: 1-19 decimal digits. */
#define ETCD_LEASE_MAX 24

/* One call's answer (HTTP status < 500, body of len bytes, from host for
 * path).  0 with *out (a JSON object; the caller deletes it); FERRY_EPROTO
 * when the body is not one JSON object (blanks may follow it); FERRY_ENOSEG for gRPC NOT_FOUND (an
 * unknown lease) and FERRY_EIO for any other error answer, with etcd's
 * message sanitized. */
int etcd_reply_parse(const char *host, const char *path, long status, const char *body, size_t len, cJSON **out);

/* A lease grant's "ID" into lease (ETCD_LEASE_MAX bytes): 0, or
 * FERRY_EPROTO for an ID that is absent, not a decimal string, 0, or over
 * the int64 etcd's IDs are. */
int etcd_reply_lease_id(const cJSON *j, const char *url, char lease[ETCD_LEASE_MAX]);

/* A keepalive answer for lease: 0 (renewed: result.TTL is a positive
 * decimal string), FERRY_ENOSEG (no TTL: the lease has expired) or
 * FERRY_EPROTO (a TTL that is no number, or the answer names another
 * lease). */
int etcd_reply_lease_alive(const cJSON *j, const char *url, const char *lease);

/* A range answer for the one key `key` (base64, as sent), published as
 * segment name: the descriptor text (*json malloc'd, NUL-terminated, *len).
 * FERRY_ENOSEG when "kvs" is absent or empty; FERRY_EPROTO when "kvs" is not
 * an array, holds more than one entry, an entry of another key, or a value
 * that is not canonical base64. */
int etcd_reply_range(const cJSON *j, const char *name, const char *key, char **json, size_t *len);

/* An HTTP store's entry for segment name at url, as http.c's put writes it:
 * exactly {"expires_unix_s": N, "descriptor": {...}}.  The descriptor text
 * (*json malloc'd, *json_len) while now (Unix seconds) <= N; FERRY_ENOSEG
 * once it expired; FERRY_EPROTO for any other shape. */
int http_reply_entry(const char *body, size_t len, double now, const char *name, const char *url, char **json,
                     size_t *json_len);

#endif
