/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_memreg.c — the registry of memory regions: adjacent regions, overlaps
 * on every side (FERRY_EEXIST, detail names both ranges), empty and wrapping
 * regions (FERRY_EINVAL), lookups at every edge, remote_only, listing,
 * removal (FERRY_ENOTREG), many regions in random order checked against a
 * model, lookups racing with writers, and accesses in flight: removal revokes
 * and waits for every overlapping access (never returns while one lasts),
 * calls each cancel hook once, leaves other accesses alone, and no access
 * starts after removal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "memreg.h"

static struct memreg_region region(uint64_t addr, uint64_t len, int remote)
{
    struct memreg_region r;
    memset(&r, 0, sizeof r);
    r.addr = addr;
    r.len = len;
    snprintf(r.location, sizeof r.location, "%s", remote ? "cuda:3" : "cpu");
    r.device_index = remote ? 3 : -1;
    r.remote_accessible = remote;
    r.transport_handle[0] = (void *)(uintptr_t)(addr ^ 0x5a5a);
    return r;
}

static void add_ok(struct memreg *reg, uint64_t addr, uint64_t len, int remote)
{
    struct memreg_region r = region(addr, len, remote);
    int rc = memreg_add(reg, &r);
    if (rc)
        fail_msg("add 0x%llx+0x%llx: %s: %s", (unsigned long long)addr, (unsigned long long)len,
                 ferry_err_name(rc), ferry_last_error());
}

/* Adding [addr, addr+len) must fail with code; the detail must contain needle. */
static void add_fails(struct memreg *reg, uint64_t addr, uint64_t len, int code, const char *needle)
{
    size_t count = reg->count;
    uint64_t gen = reg->generation;
    struct memreg_region r = region(addr, len, 1);
    ferry_clear_error();
    int rc = memreg_add(reg, &r);
    if (rc != code)
        fail_msg("add 0x%llx+0x%llx returned %s, expected %s", (unsigned long long)addr, (unsigned long long)len,
                 ferry_err_name(rc), ferry_err_name(code));
    if (!strstr(ferry_last_error(), needle))
        fail_msg("detail \"%s\" does not mention \"%s\"", ferry_last_error(), needle);
    assert_int_equal(reg->count, count);      /* nothing changed */
    assert_true(reg->generation == gen);
}

static int found(struct memreg *reg, uint64_t addr, uint64_t len, int remote_only)
{
    return memreg_find(reg, addr, len, remote_only, NULL) == 0;
}

static void test_empty(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    assert_int_equal(memreg_find(&reg, 0x1000, 1, 0, NULL), FERRY_ENOTREG);
    assert_int_equal(memreg_list_remote(&reg, NULL, 0), 0);
    ferry_clear_error();
    assert_int_equal(memreg_remove(&reg, 0x1000, NULL), FERRY_ENOTREG);
    assert_non_null(strstr(ferry_last_error(), "0x1000"));
    assert_int_equal(memreg_search(NULL, 0, 0x1000, 1), -1);
    memreg_destroy(&reg);
}

static void test_adjacent(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x2000, 0x1000, 1);
    add_ok(&reg, 0x1000, 0x1000, 0); /* ends where the first starts */
    add_ok(&reg, 0x3000, 0x1000, 1); /* starts where the first ends */
    add_ok(&reg, 0x0, 0x1000, 0);    /* address 0 is a valid address */
    assert_int_equal(reg.count, 4);
    for (size_t i = 0; i < reg.count; i++)
        assert_true(reg.regions[i].addr == 0x1000 * i && reg.regions[i].len == 0x1000);
    assert_true(reg.generation == 4);

    /* each region is found whole; nothing spanning two adjacent ones is */
    for (uint64_t a = 0; a < 0x4000; a += 0x1000) {
        struct memreg_region out;
        memset(&out, 0, sizeof out);
        assert_int_equal(memreg_find(&reg, a, 0x1000, 0, &out), 0);
        assert_true(out.addr == a && out.len == 0x1000);
        assert_true(out.transport_handle[0] == (void *)(uintptr_t)(a ^ 0x5a5a));
        assert_false(found(&reg, a + 0xfff, 2, 0));
        assert_false(found(&reg, a, 0x1001, 0));
    }
    assert_false(found(&reg, 0, 0x4000, 0));
    assert_false(found(&reg, 0x4000, 1, 0)); /* one past the last */
    assert_true(found(&reg, 0x3fff, 1, 0));
    memreg_destroy(&reg);
}

static void test_overlaps(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x10000, 0x1000, 1);
    add_ok(&reg, 0x20000, 0x1000, 0);
    add_fails(&reg, 0xf800, 0x1000, FERRY_EEXIST, "0x10000");       /* runs into the start */
    add_fails(&reg, 0xffff, 2, FERRY_EEXIST, "overlaps");           /* by one byte */
    add_fails(&reg, 0x10fff, 0x10, FERRY_EEXIST, "0x10000+4096");   /* starts on the last byte */
    add_fails(&reg, 0x10800, 0x1000, FERRY_EEXIST, "0x10800");      /* runs off the end */
    add_fails(&reg, 0x10100, 0x10, FERRY_EEXIST, "overlaps");       /* inside */
    add_fails(&reg, 0xf000, 0x3000, FERRY_EEXIST, "overlaps");      /* covers */
    add_fails(&reg, 0x10000, 0x1000, FERRY_EEXIST, "overlaps");     /* the same */
    add_fails(&reg, 0x10000, 1, FERRY_EEXIST, "overlaps");          /* same start, shorter */
    add_fails(&reg, 0x10000, 0x100000, FERRY_EEXIST, "overlaps");   /* same start, covers both */
    add_fails(&reg, 0x11000, 0xf001, FERRY_EEXIST, "0x20000");      /* fills the gap and one more */
    add_fails(&reg, 0x0, UINT64_MAX, FERRY_EEXIST, "overlaps");     /* everything */
    add_ok(&reg, 0x11000, 0xf000, 0);                               /* exactly the gap */
    assert_int_equal(reg.count, 3);
    memreg_destroy(&reg);
}

static void test_empty_and_wrapping(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_fails(&reg, 0x1000, 0, FERRY_EINVAL, "empty or wraps");
    add_fails(&reg, 0xfffffffffffff000ull, 0x2000, FERRY_EINVAL, "0xfffffffffffff000");
    add_fails(&reg, UINT64_MAX, UINT64_MAX, FERRY_EINVAL, "wraps");
    add_ok(&reg, 0xffffffffffffe000ull, 0x1fff, 1); /* ends at 2^64 - 1 */
    assert_true(found(&reg, 0xfffffffffffffffeull, 1, 1));
    assert_false(found(&reg, 0xffffffffffffffffull, 1, 1));
    assert_false(found(&reg, 0xfffffffffffffffeull, 2, 1));
    assert_false(found(&reg, 0xffffffffffffe000ull, UINT64_MAX, 0)); /* wrapping lookups never match */
    assert_false(found(&reg, 0xffffffffffffe000ull, 0, 0));          /* nor empty ones */
    add_ok(&reg, 0, 1, 0);
    assert_true(found(&reg, 0, 1, 0));
    assert_false(found(&reg, 0, 0, 0));
    memreg_destroy(&reg);
}

static void test_remote_only_and_list(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x30000, 0x1000, 1);
    add_ok(&reg, 0x10000, 0x1000, 0);
    add_ok(&reg, 0x20000, 0x1000, 1);
    add_ok(&reg, 0x40000, 0x1000, 0);

    struct memreg_region out;
    assert_int_equal(memreg_find(&reg, 0x10010, 0x10, 0, &out), 0);
    assert_true(out.addr == 0x10000);
    assert_string_equal(out.location, "cpu");
    assert_int_equal(out.device_index, -1);
    memset(&out, 0x77, sizeof out);
    assert_int_equal(memreg_find(&reg, 0x10010, 0x10, 1, &out), FERRY_ENOTREG);
    assert_true(out.addr == 0x7777777777777777ull); /* untouched on failure */
    assert_int_equal(memreg_find(&reg, 0x20010, 0x10, 1, &out), 0);
    assert_true(out.addr == 0x20000 && out.remote_accessible);
    assert_string_equal(out.location, "cuda:3");

    struct memreg_region list[4];
    memset(list, 0, sizeof list);
    assert_int_equal(memreg_list_remote(&reg, list, 4), 2);
    assert_true(list[0].addr == 0x20000 && list[1].addr == 0x30000); /* in address order */
    assert_true(list[2].addr == 0);                                   /* nothing more written */
    memset(list, 0, sizeof list);
    assert_int_equal(memreg_list_remote(&reg, list, 1), 2); /* total, though only one fits */
    assert_true(list[0].addr == 0x20000 && list[1].addr == 0);
    assert_int_equal(memreg_list_remote(&reg, NULL, 0), 2);
    memreg_destroy(&reg);
}

static void test_remove(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x1000, 0x1000, 1);
    add_ok(&reg, 0x2000, 0x1000, 0);
    add_ok(&reg, 0x3000, 0x1000, 1);
    uint64_t gen = reg.generation;

    ferry_clear_error();
    assert_int_equal(memreg_remove(&reg, 0x2001, NULL), FERRY_ENOTREG); /* inside, not the start */
    assert_non_null(strstr(ferry_last_error(), "0x2001"));
    assert_int_equal(memreg_remove(&reg, 0x500, NULL), FERRY_ENOTREG);  /* before all */
    assert_int_equal(memreg_remove(&reg, 0x4000, NULL), FERRY_ENOTREG); /* just after all */
    assert_int_equal(memreg_remove(&reg, UINT64_MAX, NULL), FERRY_ENOTREG);
    assert_int_equal(reg.count, 3);
    assert_true(reg.generation == gen);

    struct memreg_region out;
    assert_int_equal(memreg_remove(&reg, 0x2000, &out), 0);
    assert_true(out.addr == 0x2000 && out.len == 0x1000 && !out.remote_accessible);
    assert_true(reg.generation == gen + 1);
    assert_int_equal(reg.count, 2);
    assert_false(found(&reg, 0x2000, 1, 0));
    assert_true(found(&reg, 0x1000, 0x1000, 0));
    assert_true(found(&reg, 0x3000, 0x1000, 0));
    assert_int_equal(memreg_remove(&reg, 0x2000, NULL), FERRY_ENOTREG); /* twice */

    /* the hole can be filled again, by a different shape */
    add_ok(&reg, 0x2800, 0x800, 1);
    add_fails(&reg, 0x2000, 0x801, FERRY_EEXIST, "0x2800");
    add_ok(&reg, 0x2000, 0x800, 1);
    assert_true(found(&reg, 0x2000, 0x800, 1));
    assert_false(found(&reg, 0x2000, 0x1000, 1)); /* two regions, even though contiguous */

    assert_int_equal(memreg_remove(&reg, 0x1000, NULL), 0);
    assert_int_equal(memreg_remove(&reg, 0x3000, NULL), 0);
    assert_int_equal(memreg_remove(&reg, 0x2000, NULL), 0);
    assert_int_equal(memreg_remove(&reg, 0x2800, NULL), 0);
    assert_int_equal(reg.count, 0);
    assert_false(found(&reg, 0x2800, 1, 0));
    memreg_destroy(&reg);
}

/* xorshift64*: deterministic, so a failure reproduces */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

#define MANY 2000

static void test_many_random(void **state)
{
    (void)state;
    /* region i lives in slot [i*2^40, (i+1)*2^40) with a random offset and length,
     * so the expected answer of any lookup is known */
    static uint64_t start[MANY], len[MANY];
    static int live[MANY], order[MANY];
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    const uint64_t slot = 1ull << 40;
    for (int i = 0; i < MANY; i++) {
        start[i] = (uint64_t)i * slot + 1 + rnd(&seed) % 0x10000;
        len[i] = 1 + rnd(&seed) % (slot / 2);
        order[i] = i;
    }
    for (int i = MANY - 1; i > 0; i--) {
        int j = (int)(rnd(&seed) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    struct memreg reg;
    memreg_init(&reg);
    for (int k = 0; k < MANY; k++) {
        int i = order[k];
        add_ok(&reg, start[i], len[i], i & 1);
        live[i] = 1;
    }
    assert_int_equal(reg.count, MANY);
    for (size_t i = 1; i < reg.count; i++)
        assert_true(reg.regions[i - 1].addr + reg.regions[i - 1].len <= reg.regions[i].addr);

    for (int round = 0; round < 2; round++) {
        long idx = 0;
        size_t remote = 0;
        for (int i = 0; i < MANY; i++) {
            if (!live[i]) {
                assert_false(found(&reg, start[i], 1, 0));
                continue;
            }
            long want = idx++;
            remote += (size_t)(i & 1);
            assert_int_equal(memreg_search(reg.regions, reg.count, start[i], len[i]), want);
            assert_int_equal(memreg_search(reg.regions, reg.count, start[i] + len[i] - 1, 1), want);
            assert_int_equal(memreg_search(reg.regions, reg.count, start[i] + len[i] / 2, 1), want);
            assert_int_equal(memreg_search(reg.regions, reg.count, start[i] - 1, 1), -1);
            assert_int_equal(memreg_search(reg.regions, reg.count, start[i] - 1, 2), -1);
            assert_int_equal(memreg_search(reg.regions, reg.count, start[i] + len[i], 1), -1);
            assert_int_equal(memreg_search(reg.regions, reg.count, start[i], len[i] + 1), -1);
            assert_int_equal(found(&reg, start[i], len[i], 1), i & 1);
            /* an add anywhere inside a live region conflicts with it */
            struct memreg_region r = region(start[i] + len[i] / 2, 1, 0);
            assert_int_equal(memreg_add(&reg, &r), FERRY_EEXIST);
        }
        assert_int_equal(reg.count, (size_t)idx);
        assert_int_equal(memreg_list_remote(&reg, NULL, 0), remote);
        /* remove every region whose order position is even, in shuffled order */
        if (round == 0)
            for (int k = 0; k < MANY; k += 2) {
                struct memreg_region out;
                int i = order[k];
                assert_int_equal(memreg_remove(&reg, start[i], &out), 0);
                assert_true(out.addr == start[i] && out.len == len[i]);
                live[i] = 0;
            }
    }
    memreg_destroy(&reg);
}

/* Readers find a permanent region while a writer adds and removes others
 * around it; the copy a reader gets is always whole. */
struct race {
    struct memreg *reg;
    atomic_int stop;
    atomic_long misses;
};

static void *reader(void *arg)
{
    struct race *r = arg;
    while (!atomic_load(&r->stop)) {
        struct memreg_region out;
        if (memreg_find(r->reg, 0x80000010, 0x10, 1, &out) != 0 || out.addr != 0x80000000 ||
            out.len != 0x1000 || strcmp(out.location, "cuda:3") != 0)
            atomic_fetch_add(&r->misses, 1);
    }
    return NULL;
}

static void test_concurrent_lookups(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x80000000, 0x1000, 1);
    struct race race = {.reg = &reg};
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &race), 0);
    for (int round = 0; round < 200; round++) {
        for (uint64_t k = 0; k < 32; k++) {
            uint64_t a = (k & 1) ? 0x1000 * (k + 1) : 0x90000000 + 0x1000 * k;
            add_ok(&reg, a, 0x1000, (int)(k & 1));
        }
        for (uint64_t k = 0; k < 32; k++) {
            uint64_t a = (k & 1) ? 0x1000 * (k + 1) : 0x90000000 + 0x1000 * k;
            assert_int_equal(memreg_remove(&reg, a, NULL), 0);
        }
    }
    atomic_store(&race.stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&race.misses), 0);
    assert_int_equal(reg.count, 1);
    memreg_destroy(&reg);
}

/* An accessor thread holds an access until removal has cancelled it; the
 * remover must not return before the accessor ended it. */
struct holder {
    struct memreg *reg;
    struct memreg_access acc;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, cancels;
    atomic_int ended, removed;
};

static void holder_cancel(void *arg)
{
    struct holder *h = arg;
    pthread_mutex_lock(&h->mu);
    h->cancels++;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void *holder_main(void *arg)
{
    struct holder *h = arg;
    assert_int_equal(memreg_access_begin(h->reg, &h->acc, 0x10100, 0x100, 1, NULL, holder_cancel, h), 0);
    pthread_mutex_lock(&h->mu);
    h->started = 1;
    pthread_cond_broadcast(&h->cv);
    while (h->cancels == 0)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
    assert_true(memreg_access_revoked(&h->acc));
    assert_int_equal(atomic_load(&h->removed), 0); /* remove still waits for us */
    atomic_store(&h->ended, 1);
    memreg_access_end(h->reg, &h->acc);
    return NULL;
}

static void *remover_main(void *arg)
{
    struct holder *h = arg;
    assert_int_equal(memreg_remove(h->reg, 0x10000, NULL), 0);
    assert_int_equal(atomic_load(&h->ended), 1); /* returned only after the access ended */
    atomic_store(&h->removed, 1);
    return NULL;
}

static void test_remove_waits_for_access(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x10000, 0x1000, 1);
    add_ok(&reg, 0x20000, 0x1000, 1);
    struct holder h = {.reg = &reg};
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);

    /* an access elsewhere is neither revoked nor waited for */
    struct memreg_access other;
    struct memreg_region got;
    assert_int_equal(memreg_access_begin(&reg, &other, 0x20010, 0x10, 1, &got, NULL, NULL), 0);
    assert_true(got.addr == 0x20000);

    pthread_t th[2];
    pthread_create(&th[0], NULL, holder_main, &h);
    pthread_mutex_lock(&h.mu);
    while (!h.started)
        pthread_cond_wait(&h.cv, &h.mu);
    pthread_mutex_unlock(&h.mu);
    assert_int_equal(memreg_access_count(&reg), 2);
    pthread_create(&th[1], NULL, remover_main, &h);
    pthread_join(th[0], NULL);
    pthread_join(th[1], NULL);
    assert_int_equal(h.cancels, 1);
    assert_int_equal(atomic_load(&h.removed), 1);

    /* nothing starts on the removed range; the other access was untouched */
    struct memreg_access late;
    assert_int_equal(memreg_access_begin(&reg, &late, 0x10100, 0x10, 1, NULL, NULL, NULL), FERRY_ENOTREG);
    assert_false(memreg_access_revoked(&other));
    assert_int_equal(memreg_access_count(&reg), 1);
    memreg_access_end(&reg, &other);
    assert_int_equal(memreg_access_count(&reg), 0);
    assert_int_equal(memreg_remove(&reg, 0x20000, NULL), 0); /* nothing to wait for */
    pthread_mutex_destroy(&h.mu);
    pthread_cond_destroy(&h.cv);
    memreg_destroy(&reg);
}

/* An unregister waiting for many accesses that end quickly one after another
 * says nothing: its "still waits" warning comes after 5 s of waiting, not
 * after every fifth wake-up (each memreg_access_end wakes the waiter). */
struct quiet_remover {
    struct memreg *reg;
    atomic_int done;
};

static void *quiet_remover_main(void *arg)
{
    struct quiet_remover *q = arg;
    assert_int_equal(memreg_remove(q->reg, 0x10000, NULL), 0);
    atomic_store(&q->done, 1);
    return NULL;
}

static void test_remove_warns_only_after_seconds(void **state)
{
    (void)state;
    enum { N = 40 };
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x10000, 0x10000, 1);
    static struct memreg_access acc[N];
    for (unsigned i = 0; i < N; i++)
        assert_int_equal(memreg_access_begin(&reg, &acc[i], 0x10000 + i * 0x100, 0x100, 1, NULL, NULL, NULL), 0);

    /* the library's warnings go to stderr: into a file for this test */
    fflush(stderr);
    int saved = dup(2);
    FILE *log = tmpfile();
    assert_non_null(log);
    dup2(fileno(log), 2);

    struct quiet_remover q = {.reg = &reg};
    pthread_t th;
    pthread_create(&th, NULL, quiet_remover_main, &q);
    while (!memreg_access_revoked(&acc[N - 1])) /* the remover is draining */
        sched_yield();
    for (unsigned i = 0; i < N; i++) {
        memreg_access_end(&reg, &acc[i]);
        usleep(2000); /* the remover wakes and finds some left each time */
    }
    pthread_join(th, NULL);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    char text[4096] = "";
    rewind(log);
    size_t n = fread(text, 1, sizeof text - 1, log);
    text[n] = '\0';
    fclose(log);
    assert_int_equal(atomic_load(&q.done), 1);
    assert_null(strstr(text, "still waits")); /* 40 ends within ~0.1 s: far from 5 s */
    memreg_destroy(&reg);
}

/* begin honours remote_only and the bounds exactly as memreg_find does */
static void test_access_begin_bounds(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x1000, 0x1000, 0);
    add_ok(&reg, 0x4000, 0x1000, 1);
    struct memreg_access a;
    assert_int_equal(memreg_access_begin(&reg, &a, 0x1000, 0x10, 1, NULL, NULL, NULL), FERRY_ENOTREG);
    assert_int_equal(memreg_access_begin(&reg, &a, 0x4ff0, 0x11, 1, NULL, NULL, NULL), FERRY_ENOTREG);
    assert_int_equal(memreg_access_begin(&reg, &a, 0x4000, 0, 1, NULL, NULL, NULL), FERRY_ENOTREG);
    assert_int_equal(memreg_access_count(&reg), 0);
    assert_int_equal(memreg_access_begin(&reg, &a, 0x1000, 0x1000, 0, NULL, NULL, NULL), 0);
    memreg_access_end(&reg, &a);
    memreg_destroy(&reg);
}

/* begin_many: ranges in order, each checked as begin checks it (the region
 * of the previous range is tried first, and must not let a range that only
 * starts in it through); stops at the first miss, with the ones before it
 * started; end_many ends them all. */
static void test_access_begin_many(void **state)
{
    (void)state;
    struct memreg reg;
    memreg_init(&reg);
    add_ok(&reg, 0x1000, 0x1000, 1);
    add_ok(&reg, 0x4000, 0x1000, 0);
    struct memreg_access a[4];
    struct memreg_region out[4];
    struct memreg_want w[4] = {{0x1000, 0x10, &a[0], &out[0]}, {0x1ff0, 0x10, &a[1], &out[1]},
                               {0x1ff0, 0x11, &a[2], NULL}, {0x1000, 0x10, &a[3], NULL}};
    size_t begun = 99;
    assert_int_equal(memreg_access_begin_many(&reg, w, 4, 0, NULL, NULL, &begun), FERRY_ENOTREG);
    assert_int_equal(begun, 2); /* w[2] runs past its region's end */
    assert_int_equal(memreg_access_count(&reg), 2);
    assert_int_equal(out[1].addr, 0x1000);
    struct memreg_access *started[2] = {&a[0], &a[1]};
    memreg_access_end_many(&reg, started, 2);
    assert_int_equal(memreg_access_count(&reg), 0);

    w[2] = (struct memreg_want){0x4000, 0x10, &a[2], &out[2]}; /* not remote-accessible */
    assert_int_equal(memreg_access_begin_many(&reg, w, 3, 1, NULL, NULL, &begun), FERRY_ENOTREG);
    assert_int_equal(begun, 2);
    memreg_access_end_many(&reg, started, 2);
    assert_int_equal(memreg_access_begin_many(&reg, w, 3, 0, NULL, NULL, &begun), 0);
    assert_int_equal(begun, 3);
    assert_int_equal(out[2].addr, 0x4000);
    assert_int_equal(memreg_access_count(&reg), 3);
    struct memreg_access *all[3] = {&a[0], &a[1], &a[2]};
    memreg_access_end_many(&reg, all, 3);
    assert_int_equal(memreg_access_count(&reg), 0);
    assert_int_equal(memreg_access_begin_many(&reg, w, 0, 0, NULL, NULL, &begun), 0);
    assert_int_equal(begun, 0);
    memreg_destroy(&reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_adjacent),
        cmocka_unit_test(test_overlaps),
        cmocka_unit_test(test_empty_and_wrapping),
        cmocka_unit_test(test_remote_only_and_list),
        cmocka_unit_test(test_remove),
        cmocka_unit_test(test_many_random),
        cmocka_unit_test(test_concurrent_lookups),
        cmocka_unit_test(test_remove_waits_for_access),
        cmocka_unit_test(test_remove_warns_only_after_seconds),
        cmocka_unit_test(test_access_begin_bounds),
        cmocka_unit_test(test_access_begin_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
