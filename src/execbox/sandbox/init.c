/*
 * execbox-init: the only native code in execbox. Three roles, chosen by argv[1].
 *
 *   execbox-init enter UID GID PROCS_FILE... -- PROGRAM ARGS...
 *       Host side, started as root. Moves itself into the run's cgroups before
 *       anything untrusted exists (so every descendant is accounted and killable),
 *       drops to the unprivileged sandbox uid, sets no_new_privs and execs PROGRAM
 *       (bwrap). Doing this here instead of a Python preexec_fn keeps the spawn on
 *       the fast vfork path of the server.
 *
 *   execbox-init init CMD_FD STATUS_FD STDIN_FD STDOUT_FD STDERR_FD
 *       Inside the sandbox, as PID 1 of its pid namespace (bwrap --as-pid-1).
 *       Being PID 1 makes it immune to signals from the program (kill(-1) and
 *       SIGKILL from inside the namespace do not reach it), so the exit status
 *       it reports cannot be forged or lost. It says "ready", waits for one
 *       command on CMD_FD, forks and execs it, reaps everything, and when the
 *       command's process ends it kills every other process in the namespace and
 *       reports the exact wait status and rusage on STATUS_FD. The program's
 *       stdio pipes arrive on their own fds, not on bwrap's 0/1/2, so that the
 *       program's processes hold the only write ends: the host sees EOF the moment
 *       the last of them is gone, without waiting for the namespaces to be torn down.
 *
 *   execbox-init serve CONTROL_FD
 *       PID 1 of a long-lived sandbox (sandbox/session.py): many commands share its
 *       namespaces, so a server started by one is reachable by the next and by the
 *       preview proxy. Commands arrive on CONTROL_FD, a SOCK_SEQPACKET socket, one
 *       message each, with the program's stdin, stdout and stderr passed as
 *       SCM_RIGHTS; each runs in its own process group, which is killed when its
 *       leader ends or on request. Orphans are reaped; when the host closes the
 *       socket, every process of the sandbox is killed.
 *         host -> init: "run ID\n" COMMAND (+3 fds) | "kill ID\n"
 *         init -> host: "ready\n" | "exit ID STATUS WALL_US UTIME_US STIME_US MAXRSS_KB\n"
 *                       | "error ID MESSAGE\n"
 *
 * Command format (written by execbox/sandbox/box.py, closed after writing):
 *   "execbox1 ARGC ENVC CPU_S FSIZE NOFILE STACK\n" CWD \0 ARGV... \0 ENV... \0
 * Status lines:
 *   "ready\n"
 *   "exit STATUS WALL_US UTIME_US STIME_US MAXRSS_KB\n"  (STATUS as from wait4)
 *   "error MESSAGE\n"                                    (command malformed)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>

#define MAX_COMMAND (4 << 20)

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int enter(int argc, char **argv) {
    /* argv: enter UID GID PROCS... -- PROGRAM ARGS... */
    if (argc < 6) {
        fprintf(stderr, "execbox-init enter: usage: enter UID GID PROCS... -- PROGRAM...\n");
        return 125;
    }
    uid_t uid = (uid_t)strtoul(argv[2], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[3], NULL, 10);
    int i = 4;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write_all(fd, "0\n", 2) < 0) {
            fprintf(stderr, "execbox-init: cannot join cgroup %s: %s\n", argv[i], strerror(errno));
            return 125;
        }
        close(fd);
    }
    if (i >= argc - 1) {
        fprintf(stderr, "execbox-init enter: missing program after --\n");
        return 125;
    }
    if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0) {
        fprintf(stderr, "execbox-init: cannot drop privileges to %u:%u: %s\n", uid, gid,
                strerror(errno));
        return 125;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        fprintf(stderr, "execbox-init: no_new_privs: %s\n", strerror(errno));
        return 125;
    }
    execv(argv[i + 1], &argv[i + 1]);
    fprintf(stderr, "execbox-init: cannot execute %s: %s\n", argv[i + 1], strerror(errno));
    return 125;
}

static char *read_command(int fd, size_t *len_out) {
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return NULL;
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_COMMAND) {
                free(buf);
                return NULL;
            }
            cap *= 2;
            char *grown = realloc(buf, cap + 1);
            if (!grown) {
                free(buf);
                return NULL;
            }
            buf = grown;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            free(buf);
            return NULL;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    *len_out = len;
    return buf;
}

/* Splits the NUL-separated strings after the header into vec; returns the next position. */
static char *take_strings(char *pos, char *end, char **vec, long count) {
    for (long k = 0; k < count; k++) {
        if (pos >= end) return NULL;
        vec[k] = pos;
        char *nul = memchr(pos, '\0', (size_t)(end - pos));
        if (!nul) return NULL;
        pos = nul + 1;
    }
    vec[count] = NULL;
    return pos;
}

static void set_limit(int resource, unsigned long long value) {
    struct rlimit rl = {.rlim_cur = value, .rlim_max = value};
    if (value == 0 && resource != RLIMIT_CORE) return; /* 0 means "leave as is" */
    setrlimit(resource, &rl);
}

static long long micros(const struct timeval *tv) {
    return (long long)tv->tv_sec * 1000000LL + tv->tv_usec;
}

/* A parsed command request (see the format above); its strings point into the request. */
struct command {
    unsigned long long cpu_s, fsize, nofile, stack;
    char *cwd;
    char **args;
    char **env;
};

/* Parses a command request in place; returns -1 when it is malformed. */
static int parse_command(char *cmd, size_t len, struct command *c) {
    char *end = cmd + len;
    char *nl = memchr(cmd, '\n', len);
    long argc_cmd = 0, envc = 0;
    if (!nl || sscanf(cmd, "execbox1 %ld %ld %llu %llu %llu %llu", &argc_cmd, &envc, &c->cpu_s,
                      &c->fsize, &c->nofile, &c->stack) != 6 ||
        argc_cmd < 1 || argc_cmd > 65536 || envc < 0 || envc > 65536)
        return -1;
    c->args = calloc((size_t)argc_cmd + 1, sizeof(char *));
    c->env = calloc((size_t)envc + 1, sizeof(char *));
    c->cwd = nl + 1;
    char *pos = memchr(c->cwd, '\0', (size_t)(end - c->cwd));
    if (!c->args || !c->env || !pos || !(pos = take_strings(pos + 1, end, c->args, argc_cmd)) ||
        !take_strings(pos, end, c->env, envc)) {
        free(c->args);
        free(c->env);
        return -1;
    }
    return 0;
}

/* Closes every descriptor above stdio: whatever the server held without close-on-exec
 * (inherited from its supervisor, opened by a C library) went through bwrap to us, and
 * must not reach the program. */
static void close_other_fds(void) {
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0) return;
    for (int fd = 3; fd < 65536; fd++) close(fd); /* kernels before 5.9 */
}

/* In the forked child: the program's stdio, limits, default signals, then exec. */
static void exec_command(const struct command *c, const int stdio[3]) {
    for (int k = 0; k < 3; k++) {
        if (dup2(stdio[k], k) < 0) _exit(126); /* dup2 clears close-on-exec */
    }
    close_other_fds();
    set_limit(RLIMIT_CORE, 0);
    set_limit(RLIMIT_CPU, c->cpu_s);
    set_limit(RLIMIT_FSIZE, c->fsize);
    set_limit(RLIMIT_NOFILE, c->nofile);
    set_limit(RLIMIT_STACK, c->stack);
    /* PID 1 ignores default-action signals; the program must get normal ones. */
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (chdir(c->cwd) < 0) {
        dprintf(2, "execbox: cannot enter directory %s: %s\n", c->cwd, strerror(errno));
        _exit(126);
    }
    environ = c->env;
    execvp(c->args[0], c->args);
    dprintf(2, "execbox: cannot run %s: %s\n", c->args[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

static long long elapsed_us(const struct timespec *t0, const struct timespec *t1) {
    return (long long)(t1->tv_sec - t0->tv_sec) * 1000000LL + (t1->tv_nsec - t0->tv_nsec) / 1000;
}

static int init(int argc, char **argv) {
    if (argc != 7) return 125;
    int cmd_fd = atoi(argv[2]);
    int status_fd = atoi(argv[3]);
    int stdio[3] = {atoi(argv[4]), atoi(argv[5]), atoi(argv[6])};
    fcntl(cmd_fd, F_SETFD, FD_CLOEXEC);
    fcntl(status_fd, F_SETFD, FD_CLOEXEC);
    for (int k = 0; k < 3; k++) fcntl(stdio[k], F_SETFD, FD_CLOEXEC);
    /* Not dumpable: the program (same uid) cannot open /proc/1/fd to reach our pipes. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (write_all(status_fd, "ready\n", 6) < 0) return 125;

    size_t len = 0;
    char *cmd = read_command(cmd_fd, &len);
    close(cmd_fd);
    struct command c;
    if (!cmd || parse_command(cmd, len, &c) < 0) {
        dprintf(status_fd, "error malformed command\n");
        return 125;
    }

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t child = fork();
    if (child < 0) {
        dprintf(status_fd, "error fork: %s\n", strerror(errno));
        return 125;
    }
    if (child == 0) exec_command(&c, stdio);
    /* The pipes' ends must close with the program, not with us. */
    for (int k = 0; k < 3; k++) close(stdio[k]);

    int status = 0;
    struct rusage usage;
    memset(&usage, 0, sizeof usage);
    for (;;) {
        struct rusage ru;
        int st;
        pid_t pid = wait4(-1, &st, 0, &ru);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pid == child) {
            status = st;
            usage = ru;
            break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* Nothing outlives the command: daemons, orphans and stragglers all go. */
    kill(-1, SIGKILL);
    while (wait4(-1, NULL, 0, NULL) > 0 || errno == EINTR) {
    }
    dprintf(status_fd, "exit %d %lld %lld %lld %ld\n", status, elapsed_us(&t0, &t1),
            micros(&usage.ru_utime), micros(&usage.ru_stime), usage.ru_maxrss);
    return 0;
}

/* ---- serve: PID 1 of a long-lived sandbox -------------------------------------------- */

#define MAX_JOBS 1024
#define MAX_MESSAGE (256 << 10)

struct job {
    long id;
    pid_t pid;
    struct timespec t0;
};

static struct job jobs[MAX_JOBS];
static int njobs;

static void reply(int ctl, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) send(ctl, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1), MSG_NOSIGNAL);
}

/* Reaps every ended child; a command's end is reported and the rest of its group killed,
 * so nothing it left behind holds its output pipes open. Orphans are reaped silently. */
static void reap(int ctl) {
    for (;;) {
        struct rusage ru;
        int st;
        pid_t pid = wait4(-1, &st, WNOHANG, &ru);
        if (pid <= 0) {
            if (pid < 0 && errno == EINTR) continue;
            return;
        }
        for (int k = 0; k < njobs; k++) {
            if (jobs[k].pid != pid) continue;
            struct timespec t1;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            kill(-pid, SIGKILL);
            reply(ctl, "exit %ld %d %lld %lld %lld %ld\n", jobs[k].id, st,
                  elapsed_us(&jobs[k].t0, &t1), micros(&ru.ru_utime), micros(&ru.ru_stime),
                  ru.ru_maxrss);
            jobs[k] = jobs[--njobs];
            break;
        }
    }
}

/* "run ID\n" + command request, with the program's stdin, stdout and stderr attached. */
static void start_job(int ctl, long id, char *request, size_t len, const int *fds, int nfds) {
    struct command c;
    if (nfds != 3 || parse_command(request, len, &c) < 0) {
        reply(ctl, "error %ld malformed command\n", id);
        return;
    }
    if (njobs == MAX_JOBS) {
        reply(ctl, "error %ld too many commands at once\n", id);
    } else {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        pid_t child = fork();
        if (child == 0) {
            /* Its own process group: a kill or timeout reaches everything it started. */
            setpgid(0, 0);
            exec_command(&c, fds);
        }
        if (child < 0) {
            reply(ctl, "error %ld fork: %s\n", id, strerror(errno));
        } else {
            setpgid(child, child); /* also here, so a kill right after the start finds the group */
            jobs[njobs++] = (struct job){.id = id, .pid = child, .t0 = t0};
        }
    }
    free(c.args);
    free(c.env);
}

static void kill_job(long id) {
    for (int k = 0; k < njobs; k++) {
        if (jobs[k].id == id) kill(-jobs[k].pid, SIGKILL);
    }
}

static int serve(int argc, char **argv) {
    if (argc != 3) return 125;
    int ctl = atoi(argv[2]);
    /* Only the control socket is ours to keep; whatever else came through bwrap would
     * leak into every command. */
    for (int fd = 3; fd < 1024; fd++) {
        if (fd != ctl) close(fd);
    }
    fcntl(ctl, F_SETFD, FD_CLOEXEC);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    char *buf = malloc(MAX_MESSAGE + 1);
    if (sfd < 0 || !buf) return 125;
    reply(ctl, "ready\n");
    for (;;) {
        struct pollfd pfd[2] = {{.fd = ctl, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pfd[1].revents & POLLIN) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) > 0) {
            }
            reap(ctl);
        }
        if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        char cbuf[CMSG_SPACE(3 * sizeof(int))];
        struct iovec iov = {.iov_base = buf, .iov_len = MAX_MESSAGE};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                             .msg_controllen = sizeof cbuf};
        ssize_t n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break; /* the host is gone: so is the sandbox */
        buf[n] = '\0';
        int fds[3], nfds = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                nfds = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                if (nfds > 3) nfds = 3;
                memcpy(fds, CMSG_DATA(cm), (size_t)nfds * sizeof(int));
            }
        }
        long id = 0;
        char *nl = memchr(buf, '\n', (size_t)n);
        if (nl && sscanf(buf, "run %ld", &id) == 1) {
            start_job(ctl, id, nl + 1, (size_t)(buf + n - (nl + 1)), fds, nfds);
        } else if (sscanf(buf, "kill %ld", &id) == 1) {
            kill_job(id);
        }
        /* The program's ends now belong to its process only. */
        for (int k = 0; k < nfds; k++) close(fds[k]);
    }
    kill(-1, SIGKILL);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "enter") == 0) return enter(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "init") == 0) return init(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) return serve(argc, argv);
    fprintf(stderr, "execbox-init: internal helper of execbox; roles: enter, init, serve\n");
    return 125;
}
