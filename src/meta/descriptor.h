/* SPDX-License-Identifier: Apache-2.0 */
/*
 * descriptor.h — a segment descriptor: what a peer must know to reach an
 * engine (its transports' endpoints) and what it may touch (its remote-
 * accessible buffers).  Encoded as JSON with cJSON; the decoder validates
 * everything, since descriptors arrive from the network or a metadata store
 * (fuzzed by tests/fuzz/fuzz_descriptor.c).
 */
#ifndef FERRY_DESCRIPTOR_H
#define FERRY_DESCRIPTOR_H

#include <stddef.h>
#include <stdint.h>

#define DESC_FORMAT 1
/* Peers are compatible when their fingerprints are equal: it names every wire
 * format a descriptor can lead a peer to speak. */
#define DESC_FINGERPRINT "ferry-desc-1/wire-2"
/* A descriptor may list transports this build does not know (a newer peer's):
 * they are kept by name and never looked up.  Entries past this many are
 * skipped, not refused, so an older peer can still open a newer one. */
#define DESC_MAX_TRANSPORTS 16
#define DESC_MAX_BUFFERS 65536
#define DESC_MAX_BYTES (16u << 20)

struct desc_buffer {
    uint64_t addr;
    uint64_t len;
    char location[32];
};

struct desc_transport {
    char name[16];
    char *json;           /* the transport's own endpoint object, as JSON text */
};

struct ferry_descriptor {
    int format;
    char fingerprint[64];
    char name[128];
    uint64_t engine_id;
    size_t ntransports;
    struct desc_transport transports[DESC_MAX_TRANSPORTS];
    size_t nbuffers;
    struct desc_buffer *buffers;   /* sorted by addr */
};

/* Encodes d as JSON into a malloc'd string (*out, caller frees).  0 or FERRY_ENOMEM. */
int descriptor_encode(const struct ferry_descriptor *d, char **out);

/* Parses and validates len bytes of JSON into *d (zeroed first; free with
 * descriptor_free even on failure).  FERRY_EPROTO for malformed input,
 * FERRY_EVERSION for another format version or fingerprint. */
int descriptor_decode(const char *json, size_t len, struct ferry_descriptor *d);

void descriptor_free(struct ferry_descriptor *d);

/* The endpoint JSON of transport `name`, or NULL if the peer lacks it. */
const char *descriptor_transport(const struct ferry_descriptor *d, const char *name);

/* Index of the buffer wholly containing [addr, addr+len), or -1. */
long descriptor_find_buffer(const struct ferry_descriptor *d, uint64_t addr, uint64_t len);

#endif
