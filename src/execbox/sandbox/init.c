/*
 * execbox-init: the only native code in execbox. Two roles, chosen by argv[1].
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
 * Command format (written by execbox/sandbox/process.py, closed after writing):
 *   "execbox1 ARGC ENVC CPU_S FSIZE NOFILE STACK\n" CWD \0 ARGV... \0 ENV... \0
 * Status lines:
 *   "ready\n"
 *   "exit STATUS WALL_US UTIME_US STIME_US MAXRSS_KB\n"  (STATUS as from wait4)
 *   "error MESSAGE\n"                                    (command malformed)
 */
#define _GNU_SOURCE
#include <errno.h>
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
    char *end = cmd ? cmd + len : NULL;
    char *nl = cmd ? memchr(cmd, '\n', len) : NULL;
    long argc_cmd = 0, envc = 0;
    unsigned long long cpu_s = 0, fsize = 0, nofile = 0, stack = 0;
    if (!nl || sscanf(cmd, "execbox1 %ld %ld %llu %llu %llu %llu", &argc_cmd, &envc, &cpu_s,
                      &fsize, &nofile, &stack) != 6 ||
        argc_cmd < 1 || argc_cmd > 65536 || envc < 0 || envc > 65536) {
        dprintf(status_fd, "error malformed command\n");
        return 125;
    }
    char **args = calloc((size_t)argc_cmd + 1, sizeof(char *));
    char **env = calloc((size_t)envc + 1, sizeof(char *));
    char *cwd = nl + 1;
    char *pos = memchr(cwd, '\0', (size_t)(end - cwd));
    if (!args || !env || !pos || !(pos = take_strings(pos + 1, end, args, argc_cmd)) ||
        !take_strings(pos, end, env, envc)) {
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
    if (child == 0) {
        for (int k = 0; k < 3; k++) {
            if (dup2(stdio[k], k) < 0) _exit(126); /* dup2 clears close-on-exec */
        }
        set_limit(RLIMIT_CORE, 0);
        set_limit(RLIMIT_CPU, cpu_s);
        set_limit(RLIMIT_FSIZE, fsize);
        set_limit(RLIMIT_NOFILE, nofile);
        set_limit(RLIMIT_STACK, stack);
        /* PID 1 ignores default-action signals; the program must get normal ones. */
        for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (chdir(cwd) < 0) {
            dprintf(2, "execbox: cannot enter directory %s: %s\n", cwd, strerror(errno));
            _exit(126);
        }
        environ = env;
        execvp(args[0], args);
        dprintf(2, "execbox: cannot run %s: %s\n", args[0], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
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
    long long wall_us = (long long)(t1.tv_sec - t0.tv_sec) * 1000000LL +
                        (t1.tv_nsec - t0.tv_nsec) / 1000;
    dprintf(status_fd, "exit %d %lld %lld %lld %ld\n", status, wall_us, micros(&usage.ru_utime),
            micros(&usage.ru_stime), usage.ru_maxrss);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "enter") == 0) return enter(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "init") == 0) return init(argc, argv);
    fprintf(stderr, "execbox-init: internal helper of execbox; roles: enter, init\n");
    return 125;
}
