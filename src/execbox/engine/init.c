/*
 * execbox-init: the only native code in execbox. Two roles, chosen by argv[1].
 *
 *   execbox-init enter UID GID PROCS_FILE... -- PROGRAM ARGS...
 *       Host side, started as root. Moves itself into the box's cgroups before
 *       anything untrusted exists (so every descendant is accounted and killable),
 *       drops to the unprivileged sandbox uid, sets no_new_privs and execs PROGRAM
 *       (bwrap). Doing this here instead of a Python preexec_fn keeps the spawn on
 *       the fast vfork path of the server.
 *
 *   execbox-init serve CONTROL_FD [exclusive]
 *       PID 1 of a sandbox (bwrap --as-pid-1), which runs the commands the host
 *       sends. Being PID 1 makes it immune to signals from the program (kill(-1)
 *       and SIGKILL from inside the namespace do not reach it), so the exit status
 *       it reports cannot be forged or lost. Commands arrive on CONTROL_FD, a
 *       SOCK_SEQPACKET socket, one message each, with the program's stdin, stdout
 *       and stderr passed as SCM_RIGHTS: the program's processes hold the only
 *       write ends, so the host sees EOF the moment the last of them is gone. Each
 *       command runs in its own process group; orphans are reaped; when the host
 *       closes the socket, every process of the sandbox is killed.
 *         - shared (persistent sandboxes, sandbox/session.py): many commands at once,
 *           so a server started by one is reachable by the next and by the preview
 *           proxy; a command's end or kill takes its process group.
 *         - exclusive (sandbox/box.py): one command at a time, and its end or kill
 *           takes every other process and System V IPC object of the sandbox, so the
 *           host can reuse the sandbox for the next command, even someone else's.
 *         host -> init: "run ID\n" COMMAND (+3 fds) | "kill ID\n"
 *         init -> host: "ready\n" | "exit ID STATUS WALL_US UTIME_US STIME_US MAXRSS_KB\n"
 *                       | "error ID MESSAGE\n"       (STATUS as from wait4)
 *
 * Command format (written by execbox/sandbox/command.py):
 *   "execbox1 ARGC ENVC CPU_S FSIZE NOFILE STACK\n" CWD \0 ARGV... \0 ENV... \0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
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
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

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

/* A command too large for one control message comes in a memfd of the host's; NULL when
 * it is not a plausible one. */
static char *read_command(int fd, size_t *len_out) {
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_COMMAND) return NULL;
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len + 1);
    if (!buf) return NULL;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            free(buf);
            return NULL;
        }
        got += (size_t)n;
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
/* One command at a time, and nothing of it survives its end (see "exclusive" above). */
static int exclusive;

static void reply(int ctl, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) send(ctl, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1), MSG_NOSIGNAL);
}

/* Removes every System V IPC object of the namespace. They outlive processes; in an
 * exclusive sandbox the next command may be someone else's. Every object was made by
 * the sandbox uid, which may remove it whatever its mode. */
static void remove_sysv_ipc(void) {
    static const char *const tables[] = {"/proc/sysvipc/shm", "/proc/sysvipc/sem",
                                         "/proc/sysvipc/msg"};
    for (int t = 0; t < 3; t++) {
        FILE *f = fopen(tables[t], "re");
        if (!f) continue;
        char line[512];
        long long key;
        int id;
        if (!fgets(line, sizeof line, f)) line[0] = '\0'; /* the header */
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "%lld %d", &key, &id) != 2) continue;
            if (t == 0) shmctl(id, IPC_RMID, NULL);
            else if (t == 1) semctl(id, 0, IPC_RMID);
            else msgctl(id, IPC_RMID, NULL);
        }
        fclose(f);
    }
}

/* Exclusive mode: the command is over, so is everything it started, daemons and
 * setsid escapees included (PID 1's kill(-1) reaches every process but itself). */
static void end_everything(void) {
    kill(-1, SIGKILL);
    while (wait4(-1, NULL, 0, NULL) > 0 || errno == EINTR) {
    }
    remove_sysv_ipc();
}

/* Reaps every ended child; a command's end is reported and the rest of its group killed
 * (in exclusive mode: every other process), so nothing it left behind holds its output
 * pipes open. Orphans are reaped silently. */
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
            if (exclusive) {
                end_everything();
            } else {
                kill(-pid, SIGKILL);
            }
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
    if (njobs == (exclusive ? 1 : MAX_JOBS)) {
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
        if (jobs[k].id == id) kill(exclusive ? -1 : -jobs[k].pid, SIGKILL);
    }
}

static int serve(int argc, char **argv) {
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "exclusive") == 0)) return 125;
    int ctl = atoi(argv[2]);
    exclusive = argc == 4;
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
        char cbuf[CMSG_SPACE(4 * sizeof(int))];
        struct iovec iov = {.iov_base = buf, .iov_len = MAX_MESSAGE};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                             .msg_controllen = sizeof cbuf};
        ssize_t n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break; /* the host is gone: so is the sandbox */
        buf[n] = '\0';
        int fds[4], nfds = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                nfds = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                if (nfds > 4) nfds = 4;
                memcpy(fds, CMSG_DATA(cm), (size_t)nfds * sizeof(int));
            }
        }
        long id = 0;
        char *nl = memchr(buf, '\n', (size_t)n);
        if (nl && sscanf(buf, "run %ld", &id) == 1) {
            if (nfds == 4) { /* stdin, stdout, stderr and the command's memfd */
                size_t len = 0;
                char *request = read_command(fds[3], &len);
                if (request) {
                    start_job(ctl, id, request, len, fds, 3);
                    free(request);
                } else {
                    reply(ctl, "error %ld malformed command\n", id);
                }
            } else {
                start_job(ctl, id, nl + 1, (size_t)(buf + n - (nl + 1)), fds, nfds);
            }
        } else if (sscanf(buf, "kill %ld", &id) == 1) {
            kill_job(id);
        }
        for (int k = 0; k < nfds; k++) close(fds[k]);
    }
    kill(-1, SIGKILL);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "enter") == 0) return enter(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) return serve(argc, argv);
    fprintf(stderr, "execbox-init: internal helper of execbox; roles: enter, serve\n");
    return 125;
}
