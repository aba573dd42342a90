/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm.c — the shm transport: one-sided WRITE/READ between engines on the same
 * host, with no wire and no work on the target's side.
 *
 * Host memory moves with cross-memory attach (process_vm_writev/readv: one
 * system call per frame, every piece an iovec); device memory moves with the
 * device layer's copies between local memory and the peer's allocation,
 * opened here through its IPC handle (CUDA IPC: the direct GPU<->GPU path).
 * Copies run on a few worker threads (shm_copy.c); notifications go over a
 * unix socket (shm_notify.c).  This file: identity, the registry and the
 * shared memfd, registrations, the endpoint, peers, the ops table.
 *
 * Same host means the same boot id and pid namespace (and network namespace,
 * for the notification socket); otherwise peer_open answers FERRY_ENOTSUP
 * and the engine uses tcp/rdma for that peer.
 *
 * Whom an initiator writes into.  A descriptor names the target's process
 * (pid) and the fd numbers of its two memfds; anybody can serve a descriptor
 * that copies another engine's endpoint.  So nothing the initiator moves is
 * judged by the descriptor: it takes the memfds out of that very process
 * (pidfd_getfd, or /proc/<pid>/fd), checks that the registry is sealed (only
 * its creator can write it), names that pid and the engine id it meant, and
 * then checks every piece against the registrations the registry lists,
 * IPC handles included.  A piece outside them is refused (FERRY_ERANGE).
 *
 * Nothing after unregister.  The registry slot of a registration is revoked
 * before ferry_unregister_memory returns, and the initiator announces every
 * access in the target's shared memfd before it checks the slots it touches;
 * unregister then waits for overlapping announcements (see shm.h and
 * shm_copy.c).  Host copies run in SHM_CHUNK steps with a check between
 * steps, so a revocation stops a large frame within one step.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "sanitizer.h"
#include "transport/shm/shm.h"

/* ------------------------------------------------------------ identity */

static int ns_inode(const char *path, uint64_t *out)
{
    char buf[64];
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    const char *lb = n > 0 ? (buf[n] = '\0', strchr(buf, '[')) : NULL;
    if (!lb)
        return ferry_fail(FERRY_ENOTSUP, "shm: cannot read %s: %s", path, n < 0 ? strerror(errno) : buf);
    *out = strtoull(lb + 1, NULL, 10);
    return 0;
}

/* This host's identity: the boot id, and the pid and network namespaces
 * (pids and the notification socket's abstract name only mean something
 * inside them). */
static int read_identity(struct shm_transport *t)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (!f || !fgets(t->boot_id, sizeof t->boot_id, f)) {
        if (f)
            fclose(f);
        return ferry_fail(FERRY_ENOTSUP, "shm: cannot read /proc/sys/kernel/random/boot_id");
    }
    fclose(f);
    t->boot_id[strcspn(t->boot_id, "\n")] = '\0';
    int rc = ns_inode("/proc/self/ns/pid", &t->pidns);
    return rc ? rc : ns_inode("/proc/self/ns/net", &t->netns);
}

/* Under Yama ptrace_scope 1 only ancestors may attach to a process, and
 * process_vm_writev and pidfd_getfd obey the same rule: a peer that is not
 * our parent could not reach our buffers.  Offering shm means accepting
 * same-user peers, so relax Yama back to the classic rule for this process:
 * the kernel still demands the same uid (or CAP_SYS_PTRACE).  Not narrowed to
 * each peer's pid: Yama keeps one exception per process (a second
 * PR_SET_PTRACER replaces the first), so naming initiators as they come would
 * lock out every earlier one mid-transfer, and an initiator needs no
 * handshake with us before its first copy (docs/SECURITY.md, "Same-host"). */
static void allow_peers(void)
{
    FILE *f = fopen("/proc/sys/kernel/yama/ptrace_scope", "re");
    int scope = 0;
    if (!f)
        return;
    if (fscanf(f, "%d", &scope) != 1)
        scope = 0;
    fclose(f);
    if (scope == 1 && prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0) == 0)
        LOG_INFO("shm: Yama ptrace_scope 1: same-user processes may now access this process's memory "
                 "(PR_SET_PTRACER_ANY), so that shm peers can reach its buffers");
    else if (scope >= 2)
        LOG_WARN("shm: Yama ptrace_scope %d: peers cannot reach this process's memory; they will use "
                 "another transport", scope);
}

/* ------------------------------------------------------------ the registry and the shared memfd */

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#define REGISTRY_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)
#define SHARED_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* A sealable memfd of size bytes, mapped read-write. */
static int memfd_map(const char *name, size_t size, int *fd, void **map)
{
    *fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (*fd < 0 || ftruncate(*fd, (off_t)size) != 0)
        return ferry_fail(FERRY_EIO, "shm: memfd %s: %s", name, strerror(errno));
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (m == MAP_FAILED)
        return ferry_fail(FERRY_EIO, "shm: mmap of memfd %s: %s", name, strerror(errno));
    *map = m;
    return 0;
}

static int page_create(struct shm_transport *t)
{
    struct stat st;
    int rc = memfd_map("ferry-shm-shared", SHM_SHARED_SIZE, &t->shared_fd, &t->shared);
    if (!rc)
        rc = memfd_map("ferry-shm-registry", SHM_REGISTRY_SIZE, &t->page_fd, &t->registry);
    if (rc)
        return rc;
    t->served = t->shared;
    t->ann = (struct shm_announce *)((char *)t->shared + SHM_ANNOUNCE_OFFSET);
    t->page = t->registry;
    t->slots = (struct shm_slot *)((char *)t->registry + SHM_PAGE_SIZE);
    t->page->magic = SHM_PAGE_MAGIC;
    t->page->token = t->host.engine_id;
    t->page->pid = (uint64_t)getpid();
    t->page->addr = (uint64_t)(uintptr_t)t->registry;
    if (fstat(t->shared_fd, &st) != 0)
        return ferry_fail(FERRY_EIO, "shm: fstat of the shared memfd: %s", strerror(errno));
    t->page->shared_ino = (uint64_t)st.st_ino;
    /* from here on only the mapping above can write the registry */
    if (fcntl(t->page_fd, F_ADD_SEALS, REGISTRY_SEALS) != 0 || fcntl(t->shared_fd, F_ADD_SEALS, SHARED_SEALS) != 0)
        return ferry_fail(FERRY_ENOTSUP, "shm: cannot seal the registry memfd (Linux 5.1 or later): %s",
                          strerror(errno));
    return 0;
}

/* Takes fd `number` out of the peer's own process: pidfd_getfd, or
 * /proc/<pid>/fd/<number> where that is refused (seccomp). */
static int peer_fd(struct shm_peer *p, int number, int flags)
{
    int fd = p->pidfd >= 0 ? (int)syscall(SYS_pidfd_getfd, p->pidfd, number, 0) : -1;
    if (fd >= 0)
        return fd;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)p->pid, number);
    fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return ferry_fail(errno == ENOENT ? FERRY_ECONN : FERRY_ENOTSUP, "shm: segment %s: cannot open %s: %s%s",
                          p->name, path, strerror(errno),
                          errno == EACCES || errno == EPERM ? " (ptrace access rules forbid it)" : "");
    return fd;
}

/* Maps memfd `number` of the peer's process if it carries the seals and size
 * `what` must have. */
static int map_peer_memfd(struct shm_peer *p, int number, int seals, size_t size, bool writable, const char *what,
                          void **out, uint64_t *ino)
{
    int fd = peer_fd(p, number, writable ? O_RDWR : O_RDONLY);
    if (fd < 0)
        return fd;
    struct stat st;
    int have = fcntl(fd, F_GET_SEALS);
    if (have < 0 || (have & seals) != seals || fstat(fd, &st) != 0 || (size_t)st.st_size != size) {
        close(fd);
        return ferry_fail(FERRY_ESTALE, "shm: segment %s: fd %d of process %d is not a ferry %s (pid reused, or a "
                          "forged endpoint)", p->name, number, (int)p->pid, what);
    }
    void *m = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return ferry_fail(FERRY_EIO, "shm: segment %s: mmap of its %s: %s", p->name, what, strerror(errno));
    *out = m;
    *ino = (uint64_t)st.st_ino;
    return 0;
}

/* Maps the peer's registry and shared memfd, taken from its process, and
 * checks that they are that process's and that engine's. */
static int page_open(struct shm_peer *p, int registry_fd, int shared_fd)
{
    uint64_t ino = 0, shared_ino = 0;
    int rc = map_peer_memfd(p, registry_fd, REGISTRY_SEALS, SHM_REGISTRY_SIZE, false, "registry", &p->registry, &ino);
    if (rc)
        return rc;
    p->page = p->registry;
    p->slots = (struct shm_slot *)((char *)p->registry + SHM_PAGE_SIZE);
    if (p->page->magic != SHM_PAGE_MAGIC || p->page->token != p->token || p->page->pid != (uint64_t)p->pid)
        return ferry_fail(FERRY_ESTALE, "shm: segment %s: the registry of process %d belongs to engine %016llx of "
                          "process %llu, not to engine %016llx", p->name, (int)p->pid,
                          (unsigned long long)p->page->token, (unsigned long long)p->page->pid,
                          (unsigned long long)p->token);
    rc = map_peer_memfd(p, shared_fd, SHARED_SEALS, SHM_SHARED_SIZE, true, "shared memfd", &p->shared, &shared_ino);
    if (rc)
        return rc;
    if (shared_ino != p->page->shared_ino)
        return ferry_fail(FERRY_ESTALE, "shm: segment %s: fd %d of process %d is not its engine's shared memfd",
                          p->name, shared_fd, (int)p->pid);
    p->served = p->shared;
    p->ann = (struct shm_announce *)((char *)p->shared + SHM_ANNOUNCE_OFFSET);
    return 0;
}

/* Reads the registry's header where the peer maps it, from its own address
 * space: proves that this process may use process_vm_readv/writev on it, and
 * that the pid is still that engine's process. */
static int probe_peer(struct shm_peer *p)
{
    struct shm_page head = {0};
    struct iovec l = {&head, sizeof head};
    struct iovec r = {(void *)(uintptr_t)p->page->addr, sizeof head};
    if (process_vm_readv(p->pid, &l, 1, &r, 1, 0) != (ssize_t)sizeof head)
        return ferry_fail(errno == ESRCH ? FERRY_ECONN : FERRY_ENOTSUP,
                          "shm: segment %s: process_vm_readv of pid %d: %s%s", p->name, (int)p->pid,
                          strerror(errno),
                          errno == EPERM ? " (Yama ptrace_scope, a container's seccomp, or another user)" : "");
    if (head.magic != SHM_PAGE_MAGIC || head.token != p->token || head.addr != p->page->addr)
        return ferry_fail(FERRY_ESTALE, "shm: segment %s: pid %d is no longer that engine", p->name, (int)p->pid);
    return 0;
}

/* ------------------------------------------------------------ registrations */

static int shm_register_memory(void *tp, const struct memreg_region *r, void **handle)
{
    struct shm_transport *t = tp;
    *handle = NULL;
    if (!r->remote_accessible)
        return 0; /* peers never see it: nothing to share or to invalidate */
    struct shm_reg *g = calloc(1, sizeof *g);
    uint8_t h[FERRY_IPC_HANDLE_MAX];
    size_t hlen = 0;
    if (!g)
        return ferry_fail(FERRY_ENOMEM, "shm registration");
    if (r->device_index >= 0) {
        const struct ferry_device_ops *ops = ferry_device_of_location(r->location, NULL);
        size_t n = sizeof h;
        if (ops && ops->ipc_export && ops->ipc_export((void *)(uintptr_t)r->addr, r->len, h, &n) == 0)
            hlen = n;
        else
            LOG_INFO("shm: %s memory 0x%llx+%llu cannot be shared with other processes (%s); peers reach it "
                     "through another transport", r->location, (unsigned long long)r->addr,
                     (unsigned long long)r->len, ops && ops->ipc_export ? ferry_last_error() : "no IPC for this kind");
    }
    pthread_mutex_lock(&t->reg_lock);
    uint32_t i = 0;
    while (i < SHM_SLOTS && t->slot_busy[i])
        i++;
    if (i == SHM_SLOTS) {
        pthread_mutex_unlock(&t->reg_lock);
        free(g);
        return ferry_fail(FERRY_ENOMEM, "shm: more than %u remote-accessible registrations", SHM_SLOTS);
    }
    /* the slot is even (free): peers ignore it while it is filled */
    struct shm_slot *s = &t->slots[i];
    atomic_store_explicit(&s->addr, r->addr, memory_order_relaxed);
    atomic_store_explicit(&s->len, r->len, memory_order_relaxed);
    atomic_store_explicit(&s->handle_len, (uint32_t)hlen, memory_order_relaxed);
    s->device = r->device_index >= 0;
    snprintf(s->location, sizeof s->location, "%s", r->location);
    memcpy(s->handle, h, hlen);
    if (i >= atomic_load(&t->page->slots_used))
        atomic_store(&t->page->slots_used, i + 1);
    atomic_fetch_add_explicit(&s->seq, 1, memory_order_release); /* odd: live */
    t->slot_busy[i] = 1;
    g->slot = i;
    g->next = t->regs;
    t->regs = g;
    pthread_mutex_unlock(&t->reg_lock);
    *handle = g;
    return 0;
}

/* The engine has already removed the region from its registry (and from the
 * descriptor it serves).  Revokes the slot, so that no access starts any
 * more, and waits for the accesses that started before (shm_copy.c). */
static void shm_unregister_memory(void *tp, void *handle)
{
    struct shm_transport *t = tp;
    struct shm_reg *g = handle;
    struct shm_slot *s = &t->slots[g->slot];
    atomic_fetch_add(&s->seq, 1); /* even: revoked (sequentially consistent) */
    atomic_fetch_add(&t->page->unregs, 1); /* peers close their mappings of it (shm_map.c) */
    shm_wait_accesses(t, atomic_load(&s->addr), atomic_load(&s->len));
    pthread_mutex_lock(&t->reg_lock);
    for (struct shm_reg **pp = &t->regs; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    t->slot_busy[g->slot] = 0;
    pthread_mutex_unlock(&t->reg_lock);
    free(g);
}

/* ------------------------------------------------------------ endpoint */

static bool add_hex(cJSON *o, const char *key, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)v);
    return cJSON_AddStringToObject(o, key, buf) != NULL;
}

static int get_hex(const cJSON *o, const char *key, uint64_t *v)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, key);
    char *end;
    if (!cJSON_IsString(s) || strncmp(s->valuestring, "0x", 2) != 0 ||
        strspn(s->valuestring + 2, "0123456789abcdefABCDEF") != strlen(s->valuestring + 2) ||
        strlen(s->valuestring) < 3 || strlen(s->valuestring) > 18)
        return -1;
    *v = strtoull(s->valuestring + 2, &end, 16);
    return 0;
}

static int get_int(const cJSON *o, const char *key, long max, long *v)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(n) || n->valuedouble < 0 || n->valuedouble > (double)max ||
        n->valuedouble != (double)(long)n->valuedouble)
        return -1;
    *v = (long)n->valuedouble;
    return 0;
}

/* {"host", "pidns", "netns", "pid", "registry_fd", "shared_fd"}: where to
 * find the process; what it registers is read from the process itself.  The
 * notification socket's name follows from pid and engine id. */
static int shm_describe(void *tp, char **json)
{
    struct shm_transport *t = tp;
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "host", t->boot_id) && add_hex(o, "pidns", t->pidns) &&
              add_hex(o, "netns", t->netns) && cJSON_AddNumberToObject(o, "pid", (double)getpid()) &&
              cJSON_AddNumberToObject(o, "registry_fd", t->page_fd) &&
              cJSON_AddNumberToObject(o, "shared_fd", t->shared_fd);
    *json = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return *json ? 0 : ferry_fail(FERRY_ENOMEM, "shm describe");
}

/* ------------------------------------------------------------ peers */

static void peer_free(struct shm_peer *p)
{
    shm_peer_unmap(p);
    for (size_t i = 0; i < p->nbufs; i++)
        free(p->bufs[i].handle);
    free(p->bufs);
    shm_notify_close(p);
    if (p->registry)
        munmap(p->registry, SHM_REGISTRY_SIZE);
    if (p->shared)
        munmap(p->shared, SHM_SHARED_SIZE);
    if (p->pidfd >= 0)
        close(p->pidfd);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->notify_lock);
    free(p);
}

/* Reads live slot s into b (a seqlock read: the fields are the slot's of one
 * moment).  false: free, revoked, changing, or malformed. */
bool shm_read_slot(struct shm_peer *p, uint32_t i, struct shm_rbuf *b, char *location, uint8_t *handle)
{
    struct shm_slot *s = &p->slots[i];
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (!(seq & 1))
        return false;
    b->addr = atomic_load_explicit(&s->addr, memory_order_relaxed);
    b->len = atomic_load_explicit(&s->len, memory_order_relaxed);
    b->handle_len = atomic_load_explicit(&s->handle_len, memory_order_relaxed);
    b->device = s->device;
    memcpy(location, s->location, sizeof s->location);
    memcpy(handle, s->handle, sizeof s->handle);
#ifndef FERRY_UNDER_TSAN /* GCC's TSan rejects fences; it cannot see this memory's other mapping anyway */
    atomic_thread_fence(memory_order_acquire);
#endif
    if (atomic_load_explicit(&s->seq, memory_order_relaxed) != seq)
        return false;
    location[sizeof s->location - 1] = '\0';
    b->slot = i;
    atomic_store_explicit(&b->seq, seq, memory_order_relaxed);
    return b->len && b->addr + b->len > b->addr && b->handle_len <= FERRY_IPC_HANDLE_MAX;
}

static int by_addr(const void *a, const void *b)
{
    const struct shm_rbuf *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* The peer's live registrations, read from its registry (never from the
 * descriptor): what the initiator may touch, and how. */
static int peer_buffers(struct shm_peer *p)
{
    uint64_t used = atomic_load(&p->page->slots_used);
    if (used > SHM_SLOTS)
        used = SHM_SLOTS;
    p->bufs = calloc(used + 1, sizeof *p->bufs);
    if (!p->bufs)
        return ferry_fail(FERRY_ENOMEM, "shm peer buffers");
    char location[32];
    uint8_t handle[FERRY_IPC_HANDLE_MAX];
    for (uint32_t i = 0; i < used; i++) {
        struct shm_rbuf *b = &p->bufs[p->nbufs];
        memset(b, 0, sizeof *b);
        if (!shm_read_slot(p, i, b, location, handle))
            continue;
        b->ops = b->device ? ferry_device_of_location(location, &b->dev) : NULL;
        if (b->device && (!b->ops || !b->ops->ipc_open))
            b->handle_len = 0;
        if (b->handle_len && !(b->handle = malloc(b->handle_len)))
            return ferry_fail(FERRY_ENOMEM, "shm peer buffers");
        if (b->handle_len)
            memcpy(b->handle, handle, b->handle_len);
        if (b->device && !b->handle_len && !p->self) {
            char text[4 * sizeof location + 1]; /* the peer's bytes */
            LOG_INFO("shm: segment %s: %s buffer 0x%llx+%llu has no IPC handle; shm cannot reach it", p->name,
                     log_sanitize(location, sizeof location, text, sizeof text), (unsigned long long)b->addr,
                     (unsigned long long)b->len);
        }
        p->nbufs++;
    }
    qsort(p->bufs, p->nbufs, sizeof *p->bufs, by_addr);
    return 0;
}

/* Reads the endpoint and decides whether the peer is on this host. */
static int peer_endpoint(struct shm_transport *t, struct shm_peer *p, const struct ferry_descriptor *d,
                         const cJSON *j, long *registry_fd, long *shared_fd)
{
    const cJSON *host = cJSON_GetObjectItemCaseSensitive(j, "host");
    uint64_t pidns, netns;
    long pid;
    const char *bad = !cJSON_IsString(host)                            ? "host"
                      : get_hex(j, "pidns", &pidns)                      ? "pidns"
                      : get_hex(j, "netns", &netns)                      ? "netns"
                      : get_int(j, "pid", 1L << 30, &pid) || pid < 1     ? "pid"
                      : get_int(j, "registry_fd", 1L << 30, registry_fd) ? "registry_fd"
                      : get_int(j, "shared_fd", 1L << 30, shared_fd)     ? "shared_fd"
                                                                         : NULL;
    if (bad)
        return ferry_fail(FERRY_EPROTO, "segment %s: malformed shm endpoint: \"%s\" missing or out of range", d->name,
                          bad);
    if (strcmp(host->valuestring, t->boot_id) != 0 || pidns != t->pidns)
        return ferry_fail(FERRY_ENOTSUP, "segment %s is on another host (or pid namespace): shm does not reach it",
                          d->name);
    if (netns != t->netns)
        return ferry_fail(FERRY_ENOTSUP, "segment %s is in another network namespace: shm notifications "
                          "cannot reach it", d->name);
    p->pid = (pid_t)pid;
    p->self = p->pid == getpid();
    p->token = d->engine_id;
    return 0;
}

static int shm_peer_open(void *tp, const struct ferry_descriptor *d, void **out)
{
    struct shm_transport *t = tp;
    const char *ep = descriptor_transport(d, "shm");
    if (!ep)
        return ferry_fail(FERRY_ENOTSUP, "segment %s offers no shm endpoint", d->name);
    cJSON *j = cJSON_Parse(ep);
    struct shm_peer *p = calloc(1, sizeof *p);
    if (!p) {
        cJSON_Delete(j);
        return ferry_fail(FERRY_ENOMEM, "shm peer");
    }
    p->t = t;
    p->pidfd = p->notify_fd = -1;
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->notify_lock, NULL);
    snprintf(p->name, sizeof p->name, "%s", d->name);
    long registry_fd = 0, shared_fd = 0;
    int rc = j ? peer_endpoint(t, p, d, j, &registry_fd, &shared_fd)
               : ferry_fail(FERRY_EPROTO, "segment %s: shm endpoint is not JSON", d->name);
    cJSON_Delete(j);
    if (!rc) {
        p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
        if (p->pidfd < 0 && errno == ESRCH)
            rc = ferry_fail(FERRY_ECONN, "segment %s: process %d is gone", d->name, (int)p->pid);
    }
    if (!rc)
        rc = page_open(p, (int)registry_fd, (int)shared_fd);
    if (!rc)
        rc = probe_peer(p);
    if (!rc)
        rc = peer_buffers(p);
    if (rc) {
        peer_free(p);
        return rc;
    }
    LOG_DEBUG("shm: segment %s is process %d on this host (%zu registrations)", d->name, (int)p->pid, p->nbufs);
    pthread_mutex_lock(&t->lock);
    p->unregs_seen = atomic_load(&p->page->unregs);
    p->next = t->peers;
    t->peers = p;
    pthread_mutex_unlock(&t->lock);
    *out = p;
    return 0;
}

static void shm_peer_close(void *tp, void *pp)
{
    shm_peer_drain(tp, pp);
    peer_free(pp);
}

/* Local memory: host memory, or device memory of a kind that can open its
 * peers' IPC handles (for peers' host memory it bounces through pinned
 * memory of that kind). */
static int shm_can_access(void *tp, const struct memreg_region *r)
{
    (void)tp;
    if (r->device_index < 0)
        return 1;
    const struct ferry_device_ops *ops = ferry_device_of_location(r->location, NULL);
    return ops && ops->ipc_open;
}

/* Remote memory: host memory, or device memory with an IPC handle (or in
 * this very process).  A range the peer's process does not register is
 * taken, and refused at copy time with FERRY_ERANGE naming the process: the
 * descriptor that lists it is stale or forged, and no other transport of
 * that descriptor deserves more trust. */
static int shm_can_reach(void *tp, void *pp, uint64_t remote, uint64_t len)
{
    (void)tp;
    const struct shm_peer *p = pp;
    long i = shm_find_rbuf(p, remote, len);
    return i < 0 || !p->bufs[i].device || p->self || p->bufs[i].handle_len;
}

/* ------------------------------------------------------------ lifecycle */

static void shm_destroy(void *tp)
{
    struct shm_transport *t = tp;
    shm_notify_stop(t);
    shm_workers_stop(t);
    for (struct shm_reg *g = t->regs, *next; g; g = next) {
        next = g->next;
        free(g);
    }
    if (t->registry)
        munmap(t->registry, SHM_REGISTRY_SIZE);
    if (t->shared)
        munmap(t->shared, SHM_SHARED_SIZE);
    if (t->page_fd >= 0)
        close(t->page_fd);
    if (t->shared_fd >= 0)
        close(t->shared_fd);
    free(t->slot_busy);
    pthread_mutex_destroy(&t->reg_lock);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->work);
    pthread_cond_destroy(&t->idle);
    pthread_cond_destroy(&t->tick);
    free(t);
}

static int shm_create(const struct transport_host *host, void **out)
{
    struct shm_transport *t = calloc(1, sizeof *t);
    if (!t)
        return ferry_fail(FERRY_ENOMEM, "shm transport");
    t->host = *host;
    t->page_fd = t->shared_fd = -1;
    t->notify.listen_fd = -1;
    t->slot_busy = calloc(SHM_SLOTS, 1);
    pthread_mutex_init(&t->reg_lock, NULL);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->work, NULL);
    pthread_cond_init(&t->idle, NULL);
    pthread_cond_init(&t->tick, NULL);
    int rc = t->slot_busy ? read_identity(t) : ferry_fail(FERRY_ENOMEM, "shm registry slots");
    if (!rc)
        rc = page_create(t);
    if (!rc)
        rc = shm_workers_start(t);
    if (!rc)
        rc = shm_notify_start(t);
    if (rc) {
        shm_destroy(t);
        return rc;
    }
    allow_peers();
    *out = t;
    return 0;
}

static void shm_stats(void *tp, struct ferry_transport_stats *out)
{
    struct shm_transport *t = tp;
    memset(out, 0, sizeof *out);
    strcpy(out->name, "shm");
    out->bytes_written = atomic_load(&t->bytes_written);
    out->bytes_read = atomic_load(&t->bytes_read);
    out->bytes_served = atomic_load(&t->served->bytes);
    out->frames_sent = atomic_load(&t->frames_sent);
    out->refused = atomic_load(&t->refused);
}

const struct transport_ops ferry_shm_transport = {
    .name = "shm",
    .rank = 10,
    .create = shm_create,
    .destroy = shm_destroy,
    .describe = shm_describe,
    .peer_open = shm_peer_open,
    .peer_close = shm_peer_close,
    .submit = shm_submit,
    .register_memory = shm_register_memory,
    .unregister_memory = shm_unregister_memory,
    .can_access = shm_can_access,
    .can_reach = shm_can_reach,
    .stats = shm_stats,
};
