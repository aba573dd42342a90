/* SPDX-License-Identifier: Apache-2.0 */
/*
 * testutil.c — helpers shared by ferry's tests (see testutil.h).
 *
 * The child target speaks a line protocol on a socketpair: the parent sends
 * "check OFF LEN SEED" or "note", the child answers one line.  This lets
 * multi-process tests verify data on the target side and kill the target at
 * will, with real sockets between two real engines.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "device/device.h"
#include "sanitizer.h"

void test_child_dies_with_parent(pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(126);
}

int test_case_in_fresh_process(const char *name)
{
    fflush(NULL);
    pid_t parent = getpid(), pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        test_child_dies_with_parent(parent);
        execl("/proc/self/exe", program_invocation_short_name, "--case", name, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

void test_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("SKIPPED: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    exit(77);
}

int test_engine_start_with(const char *protocols, const char *var, const char *value)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    int rc = ferry_config_init(&cfg);
    if (rc)
        return rc;
    if (protocols)
        cfg.protocols = protocols;
    setenv(var, value, 1);
    rc = ferry_engine_create(&cfg, &e);
    unsetenv(var);
    if (rc == 0)
        ferry_engine_destroy(e);
    return rc;
}

const char *test_knob_refusal(const char *protocols, const char *var, const char *value)
{
    static char why[512];
    int rc = test_engine_start_with(protocols, var, value);
    if (rc == FERRY_EINVAL && strstr(ferry_last_error(), var))
        return NULL;
    snprintf(why, sizeof why, "%s=%s: %s: %s", var, value, ferry_err_name(rc), rc ? ferry_last_error() : "it started");
    return why;
}

static unsigned char byte_at(size_t i, unsigned seed)
{
    return (unsigned char)((i * 131u + seed * 7u + (i >> 12)) & 0xff);
}

void bytes_fill(void *buf, size_t len, unsigned seed)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = byte_at(i, seed);
}

int bytes_check(const void *buf, size_t len, unsigned seed)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i] != byte_at(i, seed))
            return 0;
    return 1;
}

int test_device_span(const struct ferry_device_ops *ops, const void *host, size_t len, size_t gone_len, char **dev,
                     char **gone)
{
    int rc = ops->mem_alloc(0, len, (void **)dev);
    if (rc == 0)
        rc = ops->mem_alloc(0, gone_len, (void **)gone);
    if (rc)
        return rc;
    ops->mem_free(0, *gone);
    struct ferry_copy fill = {*dev, host, len};
    return ferry_device_copy_sync(ops, 0, FERRY_COPY_H2D, &fill, 1);
}

const char *test_device_location(void)
{
    const char *d = getenv("FERRY_TEST_DEVICE");
    return d && *d ? d : "sim:0";
}

const char *test_target_location(void)
{
    const char *d = getenv("FERRY_TEST_TARGET_DEVICE");
    return d && *d ? d : test_device_location();
}

const char *test_other_location(void)
{
    const char *d = getenv("FERRY_TEST_OTHER_DEVICE");
    return d && *d ? d : NULL;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static uint64_t word_at(uint64_t seed, uint64_t pos)
{
    return mix64(seed * 0x9E3779B97F4A7C15ull ^ pos);
}

void pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t base_pos)
{
    uint64_t *w = buf;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = word_at(seed, base_pos + 8 * i);
}

long pattern_check(const void *buf, size_t len, uint64_t seed, uint64_t base_pos)
{
    const uint64_t *w = buf;
    for (size_t i = 0; i < len / 8; i++)
        if (w[i] != word_at(seed, base_pos + 8 * i))
            return (long)(8 * i);
    return -1;
}

/* The child's checks read memory that a peer's WRITE filled through one of
 * the engine's threads; what orders the two is the initiator's completion,
 * which reaches this process through another one (the parent's control
 * line), where ThreadSanitizer cannot follow.  Its reads are not recorded
 * (the engine's own threads still are).  Device memory is read by the
 * device's copy on a driver thread, not here: the sim device orders its
 * copies of the same bytes itself, as the hardware's coherence does
 * (sim.c's coherence()), so a read-back that starts after the WRITE's
 * device copy ended is ordered after it and one that overlaps it is not. */
#if defined(FERRY_UNDER_TSAN)
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
#define CROSS_PROCESS_READS_BEGIN() AnnotateIgnoreReadsBegin(__FILE__, __LINE__)
#define CROSS_PROCESS_READS_END() AnnotateIgnoreReadsEnd(__FILE__, __LINE__)
#else
#define CROSS_PROCESS_READS_BEGIN() ((void)0)
#define CROSS_PROCESS_READS_END() ((void)0)
#endif

int test_read_line(int fd, char *buf, size_t max)
{
    size_t n = 0;
    while (n + 1 < max) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0)
            return -1;
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return 0;
}

void child_target_serve(int fd, size_t len, const char *location, uint64_t seed)
{
    ferry_engine *e;
    struct ferry_config cfg;
    ferry_config_init(&cfg);
    if (ferry_engine_create(&cfg, &e) != 0) {
        dprintf(fd, "error %s\n", ferry_last_error());
        _exit(1);
    }
    void *buf, *host = malloc(len);
    if (ferry_mem_alloc(e, location, len, &buf) != 0 || !host) {
        dprintf(fd, "error %s\n", ferry_last_error());
        _exit(1);
    }
    pattern_fill(host, len, seed, 0);
    if (ferry_mem_copy(e, buf, host, len) != 0 || ferry_register_memory(e, buf, len, location, 1) != 0) {
        dprintf(fd, "error %s\n", ferry_last_error());
        _exit(1);
    }
    dprintf(fd, "%s %llx\n", ferry_engine_segment_name(e), (unsigned long long)(uintptr_t)buf);
    char line[256];
    while (test_read_line(fd, line, sizeof line) == 0) {
        unsigned long long off, n, s;
        if (sscanf(line, "check %llx %llx %llu", &off, &n, &s) == 3) {
            long bad = -2;
            CROSS_PROCESS_READS_BEGIN();
            if (off + n <= len && ferry_mem_copy(e, host, (char *)buf + off, n) == 0)
                bad = pattern_check(host, n, s, off);
            CROSS_PROCESS_READS_END();
            dprintf(fd, "%ld\n", bad < 0 ? bad : bad + (long)off);
        } else if (strcmp(line, "note") == 0) {
            static struct ferry_notification note;
            size_t got = 0;
            ferry_get_notifications(e, &note, 1, &got);
            if (got)
                dprintf(fd, "%zu %.*s\n", note.len, (int)note.len, (const char *)note.msg);
            else
                dprintf(fd, "-1\n");
        } else if (strcmp(line, "unreg") == 0) {
            dprintf(fd, "%d\n", ferry_unregister_memory(e, buf));
        } else if (sscanf(line, "fill %llu", &s) == 1) {
            pattern_fill(host, len, s, 0);
            dprintf(fd, "%d\n", ferry_mem_copy(e, buf, host, len));
        } else if (strcmp(line, "devfree") == 0) {
            /* fault injection: the memory goes, its registration stays, so
             * every later device copy to it fails */
            ferry_mem_free(e, location, buf, len);
            dprintf(fd, "0\n");
        } else if (strcmp(line, "reg") == 0) {
            dprintf(fd, "%d\n", ferry_register_memory(e, buf, len, location, 1));
        } else if (strcmp(line, "release") == 0) {
            /* unregister, then free: the allocator may hand the address out again */
            int rc = ferry_unregister_memory(e, buf);
            if (!rc)
                ferry_mem_free(e, location, buf, len);
            dprintf(fd, "%d\n", rc);
        } else if (sscanf(line, "renew %llu", &s) == 1) {
            /* after release: a new allocation, filled with pattern(s, 0), registered */
            int rc = ferry_mem_alloc(e, location, len, &buf);
            pattern_fill(host, len, s, 0);
            if (!rc && (rc = ferry_mem_copy(e, buf, host, len)) == 0)
                rc = ferry_register_memory(e, buf, len, location, 1);
            dprintf(fd, "%d %llx\n", rc, (unsigned long long)(uintptr_t)buf);
        } else if (strcmp(line, "quit") == 0) {
            break;
        }
    }
    ferry_engine_destroy(e);
    free(host);
    exit(0); /* not _exit: atexit work (a FERRY_TRACE file) is done */
}

int child_target_start(struct child_target *t, size_t len, const char *location, uint64_t seed)
{
    int sv[2];
    /* close-on-exec: a target started later must not hold this one's line */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return -1;
    fflush(NULL);
    pid_t parent = getpid(), pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        test_child_dies_with_parent(parent);
        /* exec a fresh process: device drivers (CUDA) do not survive fork;
         * its end of the line is the one descriptor it is meant to keep */
        close(sv[0]);
        if (fcntl(sv[1], F_SETFD, 0) != 0)
            _exit(127);
        char exe[4096], fd[16], lens[32], seeds[32];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 32);
        if (n < 0)
            _exit(127);
        exe[n] = '\0';
        strcpy(strrchr(exe, '/') + 1, "ferry_test_target");
        snprintf(fd, sizeof fd, "%d", sv[1]);
        snprintf(lens, sizeof lens, "%zu", len);
        snprintf(seeds, sizeof seeds, "%llu", (unsigned long long)seed);
        execl(exe, exe, fd, lens, location, seeds, (char *)NULL);
        dprintf(sv[1], "error cannot exec %s\n", exe);
        _exit(127);
    }
    close(sv[1]);
    memset(t, 0, sizeof *t);
    t->pid = pid;
    t->ctl_fd = sv[0];
    t->len = len;
    char line[256];
    unsigned long long addr;
    if (test_read_line(t->ctl_fd, line, sizeof line) != 0 || sscanf(line, "%127s %llx", t->name, &addr) != 2 ||
        strcmp(t->name, "error") == 0) {
        fprintf(stderr, "child target failed: %s\n", line);
        child_target_kill(t);
        return -1;
    }
    t->addr = addr;
    return 0;
}

long child_target_check(struct child_target *t, uint64_t off, uint64_t len, uint64_t seed)
{
    char line[64];
    dprintf(t->ctl_fd, "check %llx %llx %llu\n", (unsigned long long)off, (unsigned long long)len,
            (unsigned long long)seed);
    if (test_read_line(t->ctl_fd, line, sizeof line) != 0)
        return -2;
    return strtol(line, NULL, 10);
}

int child_target_unregister(struct child_target *t)
{
    char line[64];
    dprintf(t->ctl_fd, "unreg\n");
    if (test_read_line(t->ctl_fd, line, sizeof line) != 0)
        return -1;
    return (int)strtol(line, NULL, 10);
}

static int command(struct child_target *t, const char *cmd)
{
    char line[64];
    dprintf(t->ctl_fd, "%s\n", cmd);
    if (test_read_line(t->ctl_fd, line, sizeof line) != 0)
        return -1;
    return (int)strtol(line, NULL, 10);
}

int child_target_fill(struct child_target *t, uint64_t seed)
{
    char cmd[48];
    snprintf(cmd, sizeof cmd, "fill %llu", (unsigned long long)seed);
    return command(t, cmd);
}

int child_target_free_device_memory(struct child_target *t)
{
    return command(t, "devfree");
}

int child_target_release(struct child_target *t)
{
    return command(t, "release");
}

int child_target_renew(struct child_target *t, uint64_t seed)
{
    char line[64];
    unsigned long long addr = 0;
    int rc = -1;
    dprintf(t->ctl_fd, "renew %llu\n", (unsigned long long)seed);
    if (test_read_line(t->ctl_fd, line, sizeof line) != 0 || sscanf(line, "%d %llx", &rc, &addr) != 2)
        return -1;
    if (!rc)
        t->addr = addr;
    return rc;
}

int child_target_register(struct child_target *t)
{
    char line[64];
    dprintf(t->ctl_fd, "reg\n");
    if (test_read_line(t->ctl_fd, line, sizeof line) != 0)
        return -1;
    return (int)strtol(line, NULL, 10);
}

long child_target_notification(struct child_target *t, char *buf, size_t max)
{
    char line[4200];
    dprintf(t->ctl_fd, "note\n");
    if (test_read_line(t->ctl_fd, line, sizeof line) != 0)
        return -1;
    long n = strtol(line, NULL, 10);
    if (n < 0)
        return -1;
    const char *sp = strchr(line, ' ');
    size_t copy = (size_t)n < max ? (size_t)n : max;
    if (sp)
        memcpy(buf, sp + 1, copy);
    return n;
}

int child_target_quit(struct child_target *t)
{
    int status = -1;
    if (dprintf(t->ctl_fd, "quit\n") < 0 || waitpid(t->pid, &status, 0) != t->pid)
        status = -1;
    t->pid = 0;
    close(t->ctl_fd);
    t->ctl_fd = -1;
    return status;
}

void child_target_kill(struct child_target *t)
{
    if (t->pid > 0) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, NULL, 0);
        t->pid = 0;
    }
    if (t->ctl_fd > 0) {
        close(t->ctl_fd);
        t->ctl_fd = -1;
    }
}

int child_target_restart(struct child_target *t, size_t len, const char *location, uint64_t seed,
                         char asked[64])
{
    int port = atoi(strrchr(t->name, ':') + 1);
    child_target_kill(t);
    snprintf(asked, 64, "127.0.0.1:%d", port);
    setenv("FERRY_LOCAL_SERVER_NAME", asked, 1);
    int rc = child_target_start(t, len, location, seed);
    unsetenv("FERRY_LOCAL_SERVER_NAME");
    return rc;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d)
        return -1;
    for (struct dirent *x; (x = readdir(d));)
        n += x->d_name[0] != '.';
    closedir(d);
    return n - (strcmp(dir, "/proc/self/fd") == 0); /* opendir's own */
}

struct census census_now(void)
{
    return (struct census){count_entries("/proc/self/task"), count_entries("/proc/self/fd")};
}

/* The state letter of /proc/<pid>/task/<tid>/stat (after the name's last
 * ')'), or 0 when it cannot be read. */
static char task_state(pid_t pid, const char *tid)
{
    char path[320], buf[512]; /* a d_name is up to 255 bytes */
    snprintf(path, sizeof path, "/proc/%d/task/%s/stat", (int)pid, tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *paren = strrchr(buf, ')');
    return paren && paren[1] == ' ' ? paren[2] : 0;
}

int test_stop_process(pid_t pid)
{
    if (kill(pid, SIGSTOP) != 0)
        return -1;
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    for (unsigned waited_ms = 0; waited_ms < 10000; waited_ms++) {
        DIR *d = opendir(dir);
        if (!d)
            return -1;
        bool all = true, any = false;
        for (struct dirent *de; (de = readdir(d));) {
            if (de->d_name[0] == '.')
                continue;
            char st = task_state(pid, de->d_name);
            any = true;
            all = all && (st == 'T' || st == 't' || st == 0); /* 0: the thread has just exited */
        }
        closedir(d);
        if (all && any)
            return 0;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    return -1;
}

struct census census_settled(struct census want, unsigned limit_ms)
{
    struct census now = census_now();
    for (unsigned waited = 0; (now.threads != want.threads || now.fds != want.fds) && waited < limit_ms; waited += 10) {
        struct timespec t = {0, 10 * 1000000L};
        nanosleep(&t, NULL);
        now = census_now();
    }
    return now;
}

void test_fds_open(bool open[TEST_MAX_FD])
{
    memset(open, 0, TEST_MAX_FD * sizeof *open);
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    for (struct dirent *x; (x = readdir(d));) {
        int fd = atoi(x->d_name);
        if (x->d_name[0] != '.' && fd != dirfd(d) && fd < TEST_MAX_FD)
            open[fd] = true;
    }
    closedir(d);
}

int test_fds_not_cloexec(const bool before[TEST_MAX_FD], bool inet_only)
{
    static bool now[TEST_MAX_FD];
    int bad = 0;
    test_fds_open(now);
    for (int fd = 0; fd < TEST_MAX_FD; fd++) {
        if (!now[fd] || before[fd] || (fcntl(fd, F_GETFD) & FD_CLOEXEC))
            continue;
        char path[64], what[256];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, what, sizeof what - 1);
        what[n > 0 ? n : 0] = '\0';
        int domain = 0;
        socklen_t sl = sizeof domain;
        bool counted = !inet_only || (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &sl) == 0 &&
                                      (domain == AF_INET || domain == AF_INET6));
        fprintf(stderr, "%s: descriptor %d (%s) is not close-on-exec\n", counted ? "error" : "note (not counted)", fd,
                what);
        bad += counted;
    }
    return bad;
}

/* ------------------------------------------------------------ a name with two addresses */

static bool has_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int count_addresses(const char *name)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(name, "1", &hints, &res) != 0)
        return 0;
    int n = 0;
    for (struct addrinfo *r = res; r; r = r->ai_next)
        n++;
    freeaddrinfo(res);
    return n;
}

#define TWO_NAME "ferry-two.test"

static bool in_private_namespace; /* this process's mounts are its own: binds reach nobody else */

int test_bind_private_file(const char *target, const char *text, char *why, size_t cap)
{
    if (!in_private_namespace) { /* never bind over the host's own files */
        snprintf(why, cap, "no private mount namespace (test_two_address_name made none)");
        return -1;
    }
    char path[] = "/tmp/ferry-etc-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        snprintf(why, cap, "mkstemp: %s", strerror(errno));
        return -1;
    }
    size_t len = strlen(text);
    bool wrote = write(fd, text, len) == (ssize_t)len;
    close(fd);
    int rc = wrote ? mount(path, target, NULL, MS_BIND, NULL) : -1;
    int err = wrote ? errno : EIO;
    unlink(path); /* the mount keeps the file */
    if (rc != 0) {
        snprintf(why, cap, "binding a file over %s: %s", target, strerror(err));
        return -1;
    }
    return 0;
}

/* TWO_NAME in /etc/hosts as this process alone sees it; false with why. */
static bool hosts_entry_in_private_namespace(char *why, size_t cap)
{
    if (unshare(CLONE_NEWNS) != 0) {
        snprintf(why, cap, "unshare(CLONE_NEWNS): %s (needs root)", strerror(errno));
        return false;
    }
    /* private first, so the bind below never propagates to the host */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        snprintf(why, cap, "making / private in a new mount namespace: %s", strerror(errno));
        return false;
    }
    in_private_namespace = true;
    char text[16384];
    size_t used = 0;
    FILE *in = fopen("/etc/hosts", "r");
    if (in) {
        used = fread(text, 1, sizeof text - 128, in);
        fclose(in);
    }
    snprintf(text + used, sizeof text - used, "\n%s %s\n127.0.0.1 %s\n", has_ipv6_loopback() ? "::1" : "127.0.0.2",
             TWO_NAME, TWO_NAME);
    if (test_bind_private_file("/etc/hosts", text, why, cap) != 0)
        return false;
    if (count_addresses(TWO_NAME) < 2) {
        snprintf(why, cap, "%s does not resolve to two addresses through the bound /etc/hosts", TWO_NAME);
        return false;
    }
    return true;
}

const char *test_two_address_name(char *why, size_t cap)
{
    char ns[200];
    if (hosts_entry_in_private_namespace(ns, sizeof ns))
        return TWO_NAME;
    if (count_addresses("localhost") >= 2)
        return "localhost";
    snprintf(why, cap, "%s; and localhost has one address only", ns);
    return NULL;
}
