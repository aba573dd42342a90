/*
 * shm.c — the shm transport: one-sided WRITE/READ between engines on the same
 * host, with no wire and no work on the target's side.
 *
 * Host memory moves with cross-memory attach (process_vm_writev/readv: one
 * system call per frame, every piece an iovec); device memory moves with the
 * device layer's copies between local memory and the peer's allocation,
 * opened here through its IPC handle (CUDA IPC: the direct GPU<->GPU path).
 * Copies run on a few worker threads (shm_copy.c); notifications go over a
 * unix socket (shm_notify.c).  This file: identity, the shared page,
 * registrations, the endpoint, peers, the ops table.
 *
 * Same host means the same boot id and pid namespace (and network namespace,
 * for the notification socket); otherwise peer_open answers FERRY_ENOTSUP
 * and the engine uses tcp/rdma for that peer.
 *
 * Safety without the target's involvement.  The initiator checks every piece
 * against the buffers the peer published (refused bit otherwise).  The
 * target keeps a generation counter in page 0 of a memfd that peers map
 * read-only through /proc/<pid>/fd/<n>; it is bumped when a remote-
 * accessible buffer is unregistered.  The initiator compares it with the
 * generation its descriptor was made at, before and after every frame, and
 * ends the frame FERRY_ESTALE on a difference (the engine refreshes the
 * descriptor on the next submit).  Remaining race: an unregistration that
 * happens while a frame is being copied.  The check after the copy reports
 * it (FERRY_ESTALE), but a WRITE may already have landed in the memory, and
 * a READ may have read it, up to one frame copy (about a millisecond for a
 * 64 MiB frame) after ferry_unregister_memory returned.  A target that
 * frees or reuses memory it unregistered should wait that long, or quiesce
 * its peers first, as with any one-sided transport (RDMA has the same window
 * until its MR is deregistered).  A peer that exits is noticed through its
 * pidfd before each frame; a pid reused in the microseconds between that
 * check and the copy is the one case the check cannot see.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "base64.h"
#include "err.h"
#include "log.h"
#include "transport/shm.h"

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
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
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
 * process_vm_writev obeys the same rule: a peer that is not our parent could
 * not reach our buffers.  Offering shm means accepting same-user peers, so
 * relax Yama back to the classic same-user rule for this process. */
static void allow_peers(void)
{
    FILE *f = fopen("/proc/sys/kernel/yama/ptrace_scope", "r");
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

/* ------------------------------------------------------------ the shared page */

static int page_create(struct shm_transport *t)
{
    t->page_fd = memfd_create("ferry-shm", MFD_CLOEXEC);
    if (t->page_fd < 0 || ftruncate(t->page_fd, 2 * SHM_PAGE_SIZE) != 0)
        return ferry_fail(FERRY_EIO, "shm: memfd for the shared page: %s", strerror(errno));
    t->map = mmap(NULL, 2 * SHM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, t->page_fd, 0);
    if (t->map == MAP_FAILED) {
        t->map = NULL;
        return ferry_fail(FERRY_EIO, "shm: mmap of the shared page: %s", strerror(errno));
    }
    t->page = t->map;
    t->served = (struct shm_served *)((char *)t->map + SHM_PAGE_SIZE);
    t->page->magic = SHM_PAGE_MAGIC;
    t->page->token = t->host.engine_id;
    atomic_store(&t->page->generation, 1);
    return 0;
}

/* Maps a peer's page: page 0 read-only, page 1 (counters) read-write. */
static int page_open(struct shm_peer *p, int fd_number)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)p->pid, fd_number);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return ferry_fail(errno == ENOENT ? FERRY_ECONN : FERRY_ENOTSUP, "shm: segment %s: cannot open %s: %s%s",
                          p->name, path, strerror(errno),
                          errno == EACCES || errno == EPERM ? " (ptrace access rules forbid it)" : "");
    void *m = mmap(NULL, 2 * SHM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return ferry_fail(FERRY_EIO, "shm: segment %s: mmap of %s: %s", p->name, path, strerror(errno));
    p->map = m;
    p->page = m;
    p->served = (struct shm_served *)((char *)m + SHM_PAGE_SIZE);
    mprotect(m, SHM_PAGE_SIZE, PROT_READ);
    if (p->page->magic != SHM_PAGE_MAGIC || p->page->token != p->token)
        return ferry_fail(FERRY_ESTALE, "shm: segment %s: %s is not that engine's page (pid reused?)", p->name,
                          path);
    return 0;
}

/* Reads the token from the peer's own address space: proves that this
 * process may use process_vm_readv/writev on it, and that the pid is still
 * that engine's process. */
static int probe_peer(struct shm_peer *p, uint64_t page_addr)
{
    uint64_t token = 0;
    struct iovec l = {&token, sizeof token};
    struct iovec r = {(void *)(uintptr_t)(page_addr + offsetof(struct shm_page, token)), sizeof token};
    if (process_vm_readv(p->pid, &l, 1, &r, 1, 0) != (ssize_t)sizeof token)
        return ferry_fail(errno == ESRCH ? FERRY_ECONN : FERRY_ENOTSUP,
                          "shm: segment %s: process_vm_readv of pid %d: %s%s", p->name, (int)p->pid,
                          strerror(errno),
                          errno == EPERM ? " (Yama ptrace_scope, a container's seccomp, or another user)" : "");
    if (token != p->token)
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
    if (!g)
        return ferry_fail(FERRY_ENOMEM, "shm registration");
    g->addr = r->addr;
    g->len = r->len;
    if (r->device_index >= 0) {
        const struct ferry_device_ops *ops = ferry_device_of_location(r->location, NULL);
        size_t n = sizeof g->handle;
        if (ops && ops->ipc_export && ops->ipc_export((void *)(uintptr_t)r->addr, r->len, g->handle, &n) == 0)
            g->handle_len = n;
        else
            LOG_INFO("shm: %s memory 0x%llx+%llu cannot be shared with other processes (%s); peers reach it "
                     "through another transport", r->location, (unsigned long long)r->addr,
                     (unsigned long long)r->len, ops && ops->ipc_export ? ferry_last_error() : "no IPC for this kind");
    }
    pthread_mutex_lock(&t->reg_lock);
    g->next = t->regs;
    t->regs = g;
    pthread_mutex_unlock(&t->reg_lock);
    *handle = g;
    return 0;
}

/* The engine has already removed the region from its registry (and from the
 * descriptor it serves); bumping the generation makes peers holding an older
 * descriptor fail with FERRY_ESTALE from their next frame on. */
static void shm_unregister_memory(void *tp, void *handle)
{
    struct shm_transport *t = tp;
    struct shm_reg *g = handle;
    pthread_mutex_lock(&t->reg_lock);
    for (struct shm_reg **pp = &t->regs; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    pthread_mutex_unlock(&t->reg_lock);
    atomic_fetch_add(&t->page->generation, 1);
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

/* {"host", "pidns", "netns", "pid", "page_fd", "page_addr", "gen",
 *  "ipc": [{"addr", "handle" (base64)}]} — the notification socket's name
 * follows from pid and engine id. */
static int shm_describe(void *tp, char **json)
{
    struct shm_transport *t = tp;
    cJSON *o = cJSON_CreateObject(), *ipc = NULL;
    bool ok = o && cJSON_AddStringToObject(o, "host", t->boot_id) && add_hex(o, "pidns", t->pidns) &&
              add_hex(o, "netns", t->netns) && cJSON_AddNumberToObject(o, "pid", (double)getpid()) &&
              cJSON_AddNumberToObject(o, "page_fd", t->page_fd) &&
              add_hex(o, "page_addr", (uint64_t)(uintptr_t)t->page) &&
              add_hex(o, "gen", atomic_load(&t->page->generation)) && (ipc = cJSON_AddArrayToObject(o, "ipc"));
    pthread_mutex_lock(&t->reg_lock);
    for (const struct shm_reg *g = t->regs; ok && g; g = g->next) {
        if (!g->handle_len)
            continue;
        char *b64 = base64_encode(g->handle, g->handle_len);
        cJSON *e = cJSON_CreateObject();
        ok = b64 && e && cJSON_AddItemToArray(ipc, e) && add_hex(e, "addr", g->addr) &&
             cJSON_AddStringToObject(e, "handle", b64);
        free(b64);
    }
    pthread_mutex_unlock(&t->reg_lock);
    *json = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return *json ? 0 : ferry_fail(FERRY_ENOMEM, "shm describe");
}

/* ------------------------------------------------------------ peers */

static void peer_free(struct shm_peer *p)
{
    for (size_t i = 0; i < p->nbufs; i++) {
        struct shm_rbuf *b = &p->bufs[i];
        for (struct shm_mapping *m = b->maps, *next; m; m = next) {
            next = m->next;
            if (m->ptr && !p->self)
                b->ops->ipc_close(m->dev, m->ptr);
            free(m);
        }
        free(b->handle);
    }
    free(p->bufs);
    shm_notify_close(p);
    if (p->map)
        munmap(p->map, 2 * SHM_PAGE_SIZE);
    if (p->pidfd >= 0)
        close(p->pidfd);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->notify_lock);
    free(p);
}

/* The IPC handle the endpoint lists for the buffer at addr, if any. */
static int find_ipc_handle(const cJSON *ipc, uint64_t addr, struct shm_rbuf *b)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, ipc)
    {
        uint64_t a;
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "handle");
        if (get_hex(e, "addr", &a) != 0 || a != addr || !cJSON_IsString(h))
            continue;
        char *raw = NULL;
        size_t n = 0;
        if (strlen(h->valuestring) > 2 * FERRY_IPC_HANDLE_MAX || base64_decode(h->valuestring, &raw, &n) != 0 ||
            n == 0 || n > FERRY_IPC_HANDLE_MAX) {
            free(raw);
            return ferry_fail(FERRY_EPROTO, "shm: IPC handle of buffer 0x%llx is malformed", (unsigned long long)addr);
        }
        b->handle = (uint8_t *)raw;
        b->handle_len = n;
        return 0;
    }
    return 0;
}

static int peer_buffers(struct shm_peer *p, const struct ferry_descriptor *d, const cJSON *ipc)
{
    p->bufs = calloc(d->nbuffers + 1, sizeof *p->bufs);
    if (!p->bufs)
        return ferry_fail(FERRY_ENOMEM, "shm peer buffers");
    for (size_t i = 0; i < d->nbuffers; i++) {
        struct shm_rbuf *b = &p->bufs[i];
        char kind[16];
        b->addr = d->buffers[i].addr;
        b->len = d->buffers[i].len;
        b->device = ferry_location_parse(d->buffers[i].location, kind, NULL) != 0 || strcmp(kind, "cpu") != 0;
        b->ops = b->device ? ferry_device_of_location(d->buffers[i].location, &b->dev) : NULL;
        p->nbufs = i + 1;
        int rc = b->ops && b->ops->ipc_open && cJSON_IsArray(ipc) ? find_ipc_handle(ipc, b->addr, b) : 0;
        if (rc)
            return rc;
        if (b->device && !b->handle_len && !p->self)
            LOG_INFO("shm: segment %s: %s buffer 0x%llx+%llu has no IPC handle; shm cannot reach it", p->name,
                     d->buffers[i].location, (unsigned long long)b->addr, (unsigned long long)b->len);
    }
    return 0;
}

/* Reads the endpoint and decides whether the peer is on this host. */
static int peer_endpoint(struct shm_transport *t, struct shm_peer *p, const struct ferry_descriptor *d,
                         const cJSON *j, long *page_fd, uint64_t *page_addr)
{
    const cJSON *host = cJSON_GetObjectItemCaseSensitive(j, "host");
    uint64_t pidns, netns;
    long pid;
    if (!cJSON_IsString(host) || get_hex(j, "pidns", &pidns) || get_hex(j, "netns", &netns) ||
        get_int(j, "pid", 1L << 30, &pid) || pid < 1 || get_int(j, "page_fd", 1L << 30, page_fd) ||
        get_hex(j, "page_addr", page_addr) || get_hex(j, "gen", &p->gen))
        return ferry_fail(FERRY_EPROTO, "segment %s: malformed shm endpoint", d->name);
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
    long page_fd = 0;
    uint64_t page_addr = 0;
    int rc = j ? peer_endpoint(t, p, d, j, &page_fd, &page_addr)
               : ferry_fail(FERRY_EPROTO, "segment %s: shm endpoint is not JSON", d->name);
    if (!rc) {
        p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
        if (p->pidfd < 0 && errno == ESRCH)
            rc = ferry_fail(FERRY_ECONN, "segment %s: process %d is gone", d->name, (int)p->pid);
    }
    if (!rc)
        rc = page_open(p, (int)page_fd);
    if (!rc)
        rc = probe_peer(p, page_addr);
    if (!rc)
        rc = peer_buffers(p, d, cJSON_GetObjectItemCaseSensitive(j, "ipc"));
    cJSON_Delete(j);
    if (rc) {
        peer_free(p);
        return rc;
    }
    LOG_DEBUG("shm: segment %s is process %d on this host (%zu buffers)", d->name, (int)p->pid, p->nbufs);
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

/* Remote memory: host memory, or device memory with an IPC handle
 * (or in this very process). */
static int shm_can_reach(void *tp, void *pp, uint64_t remote, uint64_t len)
{
    (void)tp;
    const struct shm_peer *p = pp;
    long i = shm_find_rbuf(p, remote, len);
    return i >= 0 && (!p->bufs[i].device || p->self || p->bufs[i].handle_len);
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
    if (t->map)
        munmap(t->map, 2 * SHM_PAGE_SIZE);
    if (t->page_fd >= 0)
        close(t->page_fd);
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
    t->page_fd = -1;
    t->notify.listen_fd = -1;
    pthread_mutex_init(&t->reg_lock, NULL);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->work, NULL);
    pthread_cond_init(&t->idle, NULL);
    pthread_cond_init(&t->tick, NULL);
    int rc = read_identity(t);
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
    out->requests_completed = atomic_load(&t->completed);
    out->requests_failed = atomic_load(&t->failed);
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
