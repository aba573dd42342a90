/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_nic.c — the local side of the rdma transport that is not about moving
 * bytes: the FERRY_RDMA_* knobs, opening NICs (device list, active ports,
 * GID choice), where each NIC and each memory region sits (sysfs NUMA node
 * and PCIe path), memory registration (host MRs; GPU memory through dma-buf
 * or peer memory) and the queue pair state transitions both sides share.
 *
 * Everything here runs at create / registration / connect time, never per
 * request.  No threads of its own.
 */
#ifdef FERRY_HAVE_RDMA
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "device/device.h"
#include "config.h"
#include "err.h"
#include "log.h"
#include "transport/rdma/rdma.h"

/* ------------------------------------------------------------ knobs */

/* A FERRY_RDMA_* number: digits only, min..max (config_env_number). */
static int env_uint(const char *name, unsigned def, unsigned min, unsigned max, unsigned *out)
{
    char wanted[48];
    snprintf(wanted, sizeof wanted, "a number in %u..%u", min, max);
    uint64_t v = def;
    int rc = config_env_number(name, false, min, max, wanted, &v);
    *out = (unsigned)v;
    return rc < 0 ? rc : 0;
}

int rdma_knobs_load(struct rdma_knobs *k)
{
    unsigned gid, affinity, mtu_bytes;
    int rc;
    memset(k, 0, sizeof *k);
    if ((rc = env_uint("FERRY_RDMA_GID_INDEX", UINT_MAX, 0, UINT_MAX, &gid)) ||
        (rc = env_uint("FERRY_RDMA_MAX_WR", 256, 4, 16384, &k->max_wr)) ||
        (rc = env_uint("FERRY_RDMA_MAX_SGE", 16, 1, 64, &k->max_sge)) ||
        (rc = env_uint("FERRY_RDMA_MAX_MSG", 0, 0, 1u << 31, &k->max_msg)) ||
        (rc = env_uint("FERRY_RDMA_QPS_PER_PATH", 1, 1, 8, &k->qps_per_path)) ||
        (rc = env_uint("FERRY_RDMA_AFFINITY", 1, 0, 1, &affinity)) ||
        (rc = env_uint("FERRY_RDMA_ACK_TIMEOUT", 14, 1, 31, &k->ack_timeout)) ||
        (rc = env_uint("FERRY_RDMA_RETRY_CNT", 7, 0, 7, &k->retry_cnt)) ||
        (rc = env_uint("FERRY_RDMA_TRAFFIC_CLASS", 0, 0, 255, &k->traffic_class)) ||
        (rc = env_uint("FERRY_RDMA_SL", 0, 0, 15, &k->service_level)) ||
        (rc = env_uint("FERRY_RDMA_MTU", 0, 0, 4096, &mtu_bytes)) ||
        (rc = env_uint("FERRY_RDMA_POLL_SPIN_US", 50, 0, 1000000, &k->spin_us)) ||
        (rc = env_uint("FERRY_RDMA_STAGE_SLOTS", 4, 0, RDMA_STAGE_MAX_SLOTS, &k->stage_slots)) ||
        (rc = env_uint("FERRY_RDMA_STAGE_SLOT_SIZE", 1u << 20, 4096, 1u << 30, &k->stage_slot_size)) ||
        (rc = env_uint("FERRY_RDMA_STALL_MS", 5000, 0, 3600000, &k->stall_ms)))
        return rc;
    k->gid_index = gid == UINT_MAX ? -1 : (int)gid;
    k->affinity = affinity != 0;
    static const unsigned sizes[] = {256, 512, 1024, 2048, 4096};
    for (unsigned i = 0; i < 5; i++)
        if (mtu_bytes == sizes[i])
            k->mtu = IBV_MTU_256 + i;
    if (mtu_bytes && !k->mtu)
        return ferry_fail(FERRY_EINVAL, "FERRY_RDMA_MTU=%u: expected 256, 512, 1024, 2048 or 4096", mtu_bytes);
    const char *map = getenv("FERRY_RDMA_NIC_MAP");
    if (map && strlen(map) >= sizeof k->nic_map)
        return ferry_fail(FERRY_EINVAL, "FERRY_RDMA_NIC_MAP is longer than %zu characters", sizeof k->nic_map - 1);
    snprintf(k->nic_map, sizeof k->nic_map, "%s", map ? map : "");
    return 0;
}

/* ------------------------------------------------------------ sysfs topology */

static int read_int_file(const char *path, int def)
{
    FILE *f = fopen(path, "re");
    int v = def;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = def;
        fclose(f);
    }
    return v;
}

/* Where a PCI device sits: its sysfs path and NUMA node ("" / -1 if unknown). */
static void pci_locate(const char *sysfs_link, char *path, size_t cap, int *numa)
{
    char real[PATH_MAX], file[PATH_MAX + 16];
    path[0] = '\0';
    *numa = -1;
    size_t len;
    if (!realpath(sysfs_link, real) || (len = strlen(real)) >= cap)
        return;
    memcpy(path, real, len + 1); /* not snprintf: GCC -Os warns of a truncation the check above rules out */
    snprintf(file, sizeof file, "%s/numa_node", real);
    *numa = read_int_file(file, -1);
}

/* Switch hops between two PCI devices: path components not shared. */
static int pci_hops(const char *a, const char *b)
{
    size_t common = 0, i = 0;
    for (; a[i] && a[i] == b[i]; i++)
        if (a[i] == '/')
            common = i;
    if (!a[i] && (b[i] == '/' || !b[i]))
        common = i;
    int hops = 0;
    for (const char *p = a + common; *p; p++)
        hops += *p == '/';
    for (const char *p = b + common; *p; p++)
        hops += *p == '/';
    return hops;
}

/* ------------------------------------------------------------ device memory */

/* Where device dev of a kind sits (PCIe path, NUMA node), from its PCI
 * address (device.h: pci_bus_id); nothing if the kind cannot tell. */
static void device_locate(const struct ferry_device_ops *ops, int dev, char *path, size_t cap, int *numa)
{
    char id[32], link[96];
    path[0] = '\0';
    *numa = -1;
    if (!ops->pci_bus_id || ops->pci_bus_id(dev, id, sizeof id) != 0)
        return;
    snprintf(link, sizeof link, "/sys/bus/pci/devices/%s", id);
    pci_locate(link, path, cap, numa);
}

/* ------------------------------------------------------------ NICs */

static bool gid_is_ipv4_mapped(const union ibv_gid *g)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(g->raw, prefix, 12) == 0;
}

/* RoCE: the IPv4-mapped RoCE v2 entry, else any RoCE v2 entry, else index 0.
 * IB: index 0.  FERRY_RDMA_GID_INDEX overrides both. */
static int choose_gid(struct rdma_transport *t, struct rdma_nic *n)
{
    int best = -1, best_score = -1;
    if (t->knobs.gid_index >= 0) {
        best = t->knobs.gid_index;
    } else if (n->port_attr.link_layer != IBV_LINK_LAYER_ETHERNET) {
        best = 0;
    } else {
        for (int i = 0; i < n->port_attr.gid_tbl_len; i++) {
            struct ibv_gid_entry e;
            if (ibv_query_gid_ex(n->ctx, n->port, (uint32_t)i, &e, 0) != 0)
                continue;
            int score = e.gid_type == IBV_GID_TYPE_ROCE_V2 ? 1 + gid_is_ipv4_mapped(&e.gid) : 0;
            if (score > best_score)
                best = i, best_score = score;
        }
    }
    if (best < 0 || ibv_query_gid(n->ctx, n->port, best, &n->gid) != 0)
        return ferry_fail(FERRY_ENODEV, "rdma: %s port %u has no usable GID (index %d)", n->name, n->port, best);
    static const uint8_t zero[16];
    if (n->port_attr.link_layer == IBV_LINK_LAYER_ETHERNET && memcmp(n->gid.raw, zero, 16) == 0)
        return ferry_fail(FERRY_ENODEV, "rdma: %s port %u GID index %d is empty (FERRY_RDMA_GID_INDEX?)", n->name,
                          n->port, best);
    n->gid_index = best;
    return 0;
}

/* Opens one (device, port): PD, completion channel, attributes, GID, topology. */
static int nic_open(struct rdma_transport *t, struct ibv_device *dev, uint8_t port, struct ibv_context *ctx)
{
    if (t->nnics == RDMA_MAX_NICS)
        return ferry_fail(FERRY_EINVAL, "rdma: more than %d NIC ports", RDMA_MAX_NICS);
    struct rdma_nic *n = &t->nics[t->nnics];
    struct ibv_device_attr da;
    memset(n, 0, sizeof *n);
    n->index = (int)t->nnics;
    n->t = t;
    n->port = port;
    n->ctx = ctx;
    snprintf(n->name, sizeof n->name, "%s", ibv_get_device_name(dev));
    pthread_mutex_init(&n->lock, NULL);
    if (ibv_query_port(ctx, port, &n->port_attr) || ibv_query_device(ctx, &da))
        return ferry_fail(FERRY_ENODEV, "rdma: cannot query %s port %u: %s", n->name, port, strerror(errno));
    int rc = 0;
    if (!(n->pd = ibv_alloc_pd(ctx)) || !(n->channel = ibv_create_comp_channel(ctx)))
        rc = ferry_fail(FERRY_EIO, "rdma: %s: cannot allocate a PD / completion channel: %s", n->name,
                        strerror(errno));
    if (!rc)
        rc = choose_gid(t, n);
    if (rc) {
        if (n->channel)
            ibv_destroy_comp_channel(n->channel);
        if (n->pd)
            ibv_dealloc_pd(n->pd);
        pthread_mutex_destroy(&n->lock);
        return rc;
    }
    n->max_msg = n->port_attr.max_msg_sz ? n->port_attr.max_msg_sz : (1u << 30);
    if (t->knobs.max_msg && (t->knobs.max_msg < 4096 || t->knobs.max_msg < n->max_msg))
        n->max_msg = t->knobs.max_msg < 4096 ? 4096 : t->knobs.max_msg;
    n->max_sge = da.max_sge < (int)t->knobs.max_sge ? da.max_sge : (int)t->knobs.max_sge;
    n->max_wr = da.max_qp_wr < (int)t->knobs.max_wr ? da.max_qp_wr : (int)t->knobs.max_wr;
    int rd = da.max_qp_rd_atom < da.max_qp_init_rd_atom ? da.max_qp_rd_atom : da.max_qp_init_rd_atom;
    n->max_rd_atomic = rd < 1 ? 1 : rd > 255 ? 255 : rd;
    char link[128];
    snprintf(link, sizeof link, "/sys/class/infiniband/%s/device", n->name);
    pci_locate(link, n->pci_path, sizeof n->pci_path, &n->numa);
    t->nnics++;
    LOG_INFO("rdma: %s port %u: %s, lid %u, gid index %d, mtu %d, numa %d", n->name, port,
             n->port_attr.link_layer == IBV_LINK_LAYER_ETHERNET ? "RoCE" : "InfiniBand", n->port_attr.lid,
             n->gid_index, 128 << n->port_attr.active_mtu, n->numa);
    return 0;
}

/* Opens the active ports of one device (all of them, or the one named). */
static int device_open(struct rdma_transport *t, struct ibv_device *dev, int want_port, bool *any)
{
    struct ibv_context *ctx = ibv_open_device(dev);
    struct ibv_device_attr da;
    if (!ctx || ibv_query_device(ctx, &da)) {
        if (ctx)
            ibv_close_device(ctx);
        return ferry_fail(FERRY_ENODEV, "rdma: cannot open %s: %s", ibv_get_device_name(dev), strerror(errno));
    }
    bool used = false;
    for (int p = 1; p <= da.phys_port_cnt; p++) {
        struct ibv_port_attr pa;
        if ((want_port && p != want_port) || ibv_query_port(ctx, (uint8_t)p, &pa) || pa.state != IBV_PORT_ACTIVE)
            continue;
        /* each port shares the context; only the first owns it */
        int rc = nic_open(t, dev, (uint8_t)p, ctx);
        if (rc) {
            if (!used)
                ibv_close_device(ctx);
            return rc;
        }
        used = true; /* the NICs of one device share its context; closed once */
    }
    if (!used)
        ibv_close_device(ctx);
    *any = used;
    return 0;
}

/* "mlx5_0:1": the port after the colon, 1-255 (ibverbs numbers ports from 1). */
static int parse_port(const char *dev, const char *text, int *port)
{
    uint64_t v;
    if (config_parse_number(text, 1, 255, &v) != 0)
        return ferry_fail(FERRY_EINVAL, "rdma: device \"%s:%.16s\": the port after the colon is a number 1-255",
                          dev, text);
    *port = (int)v;
    return 0;
}

/* The syntax of a device list ("mlx5_0,mlx5_1:2"), checked before any
 * device is looked for, so a host without NICs refuses it too. */
static int check_device_list(const char *list, size_t cap)
{
    if (strlen(list) >= cap)
        return ferry_fail(FERRY_EINVAL, "rdma: the device list \"%.32s...\" is longer than %zu characters", list,
                          cap - 1);
    char copy[256], *save = NULL;
    snprintf(copy, sizeof copy, "%s", list);
    int port, rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); !rc && tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        if (colon) {
            *colon = '\0';
            rc = parse_port(tok, colon + 1, &port);
        }
    }
    return rc;
}

int rdma_nics_open(struct rdma_transport *t, const char *device_name)
{
    bool all = !device_name || !*device_name || strcmp(device_name, "auto") == 0;
    char copy[256], *save = NULL;
    int rc = all ? 0 : check_device_list(device_name, sizeof copy);
    if (rc)
        return rc;
    int ndev = 0;
    struct ibv_device **list = ibv_get_device_list(&ndev);
    if (!list || ndev == 0) {
        if (list)
            ibv_free_device_list(list);
        return ferry_fail(FERRY_ENODEV, "rdma: no RDMA devices on this host (ibv_get_device_list)");
    }
    char names[256] = "";
    snprintf(copy, sizeof copy, "%s", all ? "" : device_name);
    for (int i = 0; i < ndev; i++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? "," : "", ibv_get_device_name(list[i]));
    if (all) {
        for (int i = 0; !rc && i < ndev; i++) {
            bool any;
            rc = device_open(t, list[i], 0, &any);
        }
        if (!rc && t->nnics == 0)
            rc = ferry_fail(FERRY_ENODEV, "rdma: no active port on any device (%s)", names);
    }
    for (char *tok = all ? NULL : strtok_r(copy, ",", &save); !rc && tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        int port = 0;
        if (colon) {
            *colon = '\0';
            (void)parse_port(tok, colon + 1, &port); /* checked above */
        }
        struct ibv_device *dev = NULL;
        for (int i = 0; i < ndev && !dev; i++)
            if (strcmp(ibv_get_device_name(list[i]), tok) == 0)
                dev = list[i];
        bool any = false;
        if (!dev)
            rc = ferry_fail(FERRY_ENODEV, "rdma: no RDMA device \"%s\" (this host has %s)", tok, names);
        else if (!(rc = device_open(t, dev, port, &any)) && !any)
            rc = ferry_fail(FERRY_ENODEV, "rdma: %s has no active port%s", tok, colon ? " of that number" : "");
    }
    ibv_free_device_list(list);
    return rc;
}

void rdma_nics_close(struct rdma_transport *t)
{
    for (size_t i = 0; i < t->nnics; i++) {
        struct rdma_nic *n = &t->nics[i];
        if (n->channel)
            ibv_destroy_comp_channel(n->channel);
        if (n->pd)
            ibv_dealloc_pd(n->pd);
        bool shared = false;
        for (size_t j = i + 1; j < t->nnics; j++)
            shared |= t->nics[j].ctx == n->ctx;
        if (n->ctx && !shared)
            ibv_close_device(n->ctx);
        pthread_mutex_destroy(&n->lock);
    }
    t->nnics = 0;
}

/* ------------------------------------------------------------ registrations */

/* Bitmask of the NICs nearest to memory at (numa, pci path); FERRY_RDMA_NIC_MAP
 * wins when it names the location. */
static uint32_t nearest_nics(struct rdma_transport *t, const char *location, int numa, const char *pci)
{
    uint32_t all = (uint32_t)((1ull << t->nnics) - 1), pref = 0;
    char map[sizeof t->knobs.nic_map], *save = NULL;
    snprintf(map, sizeof map, "%s", t->knobs.nic_map);
    for (char *e = strtok_r(map, ";", &save); e; e = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(e, '=');
        if (!eq || (size_t)(eq - e) != strlen(location) || strncmp(e, location, (size_t)(eq - e)) != 0)
            continue;
        for (size_t i = 0; i < t->nnics; i++) {
            const char *n = t->nics[i].name;
            for (const char *p = strstr(eq + 1, n); p; p = strstr(p + 1, n))
                if ((p[-1] == '=' || p[-1] == ',') && (p[strlen(n)] == ',' || !p[strlen(n)]))
                    pref |= 1u << i;
        }
        if (!pref)
            LOG_WARN("rdma: FERRY_RDMA_NIC_MAP entry \"%s\" names no NIC in use", e);
        return pref ? pref : all;
    }
    if (!t->knobs.affinity)
        return all;
    int best = INT_MAX;
    for (size_t i = 0; i < t->nnics; i++) {
        const struct rdma_nic *n = &t->nics[i];
        int key = (numa >= 0 && n->numa >= 0 && numa != n->numa) ? 1000 : 0;
        if (pci[0] && n->pci_path[0])
            key += pci_hops(pci, n->pci_path);
        if (key < best)
            best = key, pref = 0;
        if (key == best)
            pref |= 1u << i;
    }
    return pref ? pref : all;
}

static int memory_numa(uint64_t addr)
{
    enum { MPOL_F_NODE = 1, MPOL_F_ADDR = 2 };
    int node = -1;
    if (syscall(SYS_get_mempolicy, &node, NULL, 0, (void *)(uintptr_t)addr, MPOL_F_NODE | MPOL_F_ADDR) != 0)
        return -1;
    return node;
}

static void reg_topology(struct rdma_transport *t, struct rdma_reg *g, int device_index)
{
    char pci[256] = "";
    int numa = -1, node = -1;
    const struct ferry_device_ops *ops = ferry_device_of_location(g->location, NULL);
    if (ops)
        device_locate(ops, device_index, pci, sizeof pci, &numa);
    else if (ferry_location_parse(g->location, NULL, &node) == 0)
        numa = node >= 0 ? node : memory_numa(g->addr); /* "cpu:N", or "cpu": pages are pinned by now */
    g->pref = nearest_nics(t, g->location, numa, pci);
}

static int access_flags(bool remote)
{
    return IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_RELAXED_ORDERING |
           (remote ? IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ : 0);
}

/* Device memory a NIC may reach (its kind exports dma-bufs): dma-buf first,
 * then plain ibv_reg_mr (works with peer memory, nvidia-peermem).  Returns 0
 * with g->reachable false if neither works. */
static void register_gpu(struct rdma_transport *t, struct rdma_reg *g, const struct ferry_device_ops *ops)
{
    char why[160] = "";
    uint64_t offset = 0;
    int fd = -1;
    if (ops->dmabuf_export((const void *)(uintptr_t)g->addr, g->len, &fd, &offset) != 0) {
        snprintf(why, sizeof why, "%s", ferry_last_error());
        fd = -1;
    }
    bool ok = fd >= 0;
    for (size_t i = 0; ok && i < t->nnics; i++) {
        g->mr[i] = ibv_reg_dmabuf_mr(t->nics[i].pd, offset, g->len, g->addr, fd, access_flags(g->remote));
        if (!g->mr[i]) {
            snprintf(why, sizeof why, "ibv_reg_dmabuf_mr on %s: %s", t->nics[i].name, strerror(errno));
            ok = false;
        }
    }
    if (fd >= 0)
        close(fd);
    g->dmabuf = ok;
    for (size_t i = 0; !ok && i < t->nnics; i++) {
        if (g->mr[i])
            ibv_dereg_mr(g->mr[i]);
        g->mr[i] = NULL;
    }
    for (size_t i = 0; !g->dmabuf && i < t->nnics; i++) {
        if (!(g->mr[i] = ibv_reg_mr(t->nics[i].pd, (void *)(uintptr_t)g->addr, g->len, access_flags(g->remote)))) {
            for (size_t j = 0; j < i; j++) {
                ibv_dereg_mr(g->mr[j]);
                g->mr[j] = NULL;
            }
            LOG_WARN("rdma: %s memory 0x%llx+%llu is not reachable by the NICs (dma-buf: %s; ibv_reg_mr: %s); "
                     "it will be staged through host memory",
                     g->location, (unsigned long long)g->addr, (unsigned long long)g->len, why, strerror(errno));
            return;
        }
    }
    g->reachable = true;
    LOG_INFO("rdma: %s memory 0x%llx+%llu registered through %s", g->location, (unsigned long long)g->addr,
             (unsigned long long)g->len, g->dmabuf ? "dma-buf" : "peer memory (ibv_reg_mr)");
}

int rdma_reg_create(struct rdma_transport *t, const struct memreg_region *r, struct rdma_reg **out)
{
    struct rdma_reg *g = calloc(1, sizeof *g);
    if (!g)
        return ferry_fail(FERRY_ENOMEM, "rdma registration");
    g->addr = r->addr;
    g->len = r->len;
    g->remote = r->remote_accessible;
    snprintf(g->location, sizeof g->location, "%s", r->location);
    const struct ferry_device_ops *ops = ferry_device_of_location(r->location, NULL);
    if (ops && ops->dmabuf_export) {
        register_gpu(t, g, ops);
    } else if (r->device_index < 0) {
        for (size_t i = 0; i < t->nnics; i++) {
            g->mr[i] = ibv_reg_mr(t->nics[i].pd, (void *)(uintptr_t)r->addr, r->len, access_flags(g->remote));
            if (!g->mr[i]) {
                int e = errno;
                rdma_reg_destroy(g);
                return ferry_fail(e == ENOMEM ? FERRY_ENOMEM : FERRY_EIO,
                                  "rdma: ibv_reg_mr of %p+%llu on %s failed: %s%s", (void *)(uintptr_t)r->addr,
                                  (unsigned long long)r->len, t->nics[i].name, strerror(e),
                                  e == ENOMEM || e == EPERM ? " (raise the locked-memory limit: ulimit -l)" : "");
            }
        }
        g->reachable = true;
    } /* other device memory (npu, sim): no NIC can reach it; the engine stages it */
    if (g->reachable)
        reg_topology(t, g, r->device_index);
    *out = g;
    return 0;
}

void rdma_reg_destroy(struct rdma_reg *g)
{
    for (size_t i = 0; i < RDMA_MAX_NICS; i++)
        if (g->mr[i])
            ibv_dereg_mr(g->mr[i]);
    free(g);
}

struct rdma_reg *rdma_reg_find(struct rdma_transport *t, uint64_t addr, uint64_t len)
{
    size_t lo = 0, hi = t->nregs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->regs[mid]->addr <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || addr + len < addr)
        return NULL;
    struct rdma_reg *g = t->regs[lo - 1];
    return addr + len <= g->addr + g->len ? g : NULL;
}

/* ------------------------------------------------------------ queue pairs */

struct ibv_qp *rdma_qp_create(struct rdma_nic *nic, struct ibv_cq *cq, uint32_t depth, uint32_t max_sge)
{
    struct ibv_qp_init_attr ia = {
        .send_cq = cq,
        .recv_cq = cq,
        .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = depth, .max_recv_wr = 1, .max_send_sge = max_sge, .max_recv_sge = 1},
    };
    struct ibv_qp *qp = ibv_create_qp(nic->pd, &ia);
    if (!qp) {
        ferry_fail(FERRY_EIO, "rdma: ibv_create_qp on %s: %s", nic->name, strerror(errno));
        return NULL;
    }
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_INIT,
        .port_num = nic->port,
        .qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ,
    };
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
        ferry_fail(FERRY_EIO, "rdma: queue pair to INIT on %s: %s", nic->name, strerror(errno));
        ibv_destroy_qp(qp);
        return NULL;
    }
    return qp;
}

uint8_t rdma_nic_mtu(const struct rdma_nic *nic)
{
    unsigned m = nic->port_attr.active_mtu, cap = nic->t->knobs.mtu;
    return (uint8_t)(cap && cap < m ? cap : m);
}

int rdma_gid_match(struct rdma_nic *nic, const uint8_t remote_gid[16])
{
    union ibv_gid r;
    memcpy(r.raw, remote_gid, 16);
    if (nic->port_attr.link_layer != IBV_LINK_LAYER_ETHERNET || gid_is_ipv4_mapped(&r) == gid_is_ipv4_mapped(&nic->gid))
        return nic->gid_index;
    for (int i = 0; i < nic->port_attr.gid_tbl_len; i++) {
        struct ibv_gid_entry e;
        if (ibv_query_gid_ex(nic->ctx, nic->port, (uint32_t)i, &e, 0) == 0 && e.gid_type == IBV_GID_TYPE_ROCE_V2 &&
            gid_is_ipv4_mapped(&e.gid) == gid_is_ipv4_mapped(&r))
            return i;
    }
    return nic->gid_index;
}

void rdma_qp_info_local(struct rdma_nic *nic, struct ibv_qp *qp, uint32_t psn, int gid_index, struct rdma_qp_info *out)
{
    memset(out, 0, sizeof *out);
    out->qpn = qp->qp_num;
    out->psn = psn;
    out->lid = nic->port_attr.lid;
    out->mtu = rdma_nic_mtu(nic); /* both ends must agree on the path MTU */
    out->rd_atomic = (uint8_t)nic->max_rd_atomic;
    union ibv_gid g = nic->gid;
    if (gid_index != nic->gid_index && ibv_query_gid(nic->ctx, nic->port, gid_index, &g) != 0)
        g = nic->gid;
    memcpy(out->gid, g.raw, 16);
}

int rdma_qp_connect(struct rdma_transport *t, struct rdma_nic *nic, struct ibv_qp *qp, int gid_index,
                    const struct rdma_qp_info *remote, bool remote_ib, uint32_t my_psn, const char *who)
{
    uint8_t mtu = rdma_nic_mtu(nic);
    bool lid_route = remote_ib && nic->port_attr.link_layer != IBV_LINK_LAYER_ETHERNET && remote->lid;
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_RTR,
        .path_mtu = remote->mtu < mtu ? remote->mtu : mtu,
        .dest_qp_num = remote->qpn,
        .rq_psn = remote->psn,
        .max_dest_rd_atomic = (uint8_t)nic->max_rd_atomic,
        .min_rnr_timer = 12,
        .ah_attr = {.dlid = lid_route ? remote->lid : 0, .sl = (uint8_t)t->knobs.service_level,
                    .is_global = !lid_route, .port_num = nic->port},
    };
    if (!lid_route) {
        memcpy(a.ah_attr.grh.dgid.raw, remote->gid, 16);
        a.ah_attr.grh.sgid_index = (uint8_t)gid_index;
        a.ah_attr.grh.hop_limit = 64;
        a.ah_attr.grh.traffic_class = (uint8_t)t->knobs.traffic_class;
    }
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                  IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
        return ferry_fail(FERRY_EIO, "rdma: queue pair %s to RTR on %s (remote qpn %u): %s", who, nic->name,
                          remote->qpn, strerror(errno));
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = (uint8_t)t->knobs.ack_timeout;
    a.retry_cnt = (uint8_t)t->knobs.retry_cnt;
    a.rnr_retry = 7;
    a.sq_psn = my_psn;
    a.max_rd_atomic = (uint8_t)(remote->rd_atomic < nic->max_rd_atomic ? remote->rd_atomic : nic->max_rd_atomic);
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                  IBV_QP_MAX_QP_RD_ATOMIC))
        return ferry_fail(FERRY_EIO, "rdma: queue pair %s to RTS on %s: %s", who, nic->name, strerror(errno));
    return 0;
}

#endif /* FERRY_HAVE_RDMA */
