#!/bin/sh
# Makes the container's cgroup tree writable, then runs the command.
#
# Docker and Kubernetes mount /sys/fs/cgroup read-only in containers that are not
# privileged. With a private cgroup namespace (docker --cgroupns=private, the default
# on cgroup v2 hosts) that tree is only the container's own cgroup, so remounting it
# read-write (CAP_SYS_ADMIN) lets execbox create one child cgroup per sandboxed run
# without seeing or touching anything of the host's.
set -eu

if [ -d /sys/fs/cgroup ] && ! [ -w /sys/fs/cgroup/cgroup.procs ] \
    && grep -q ' /sys/fs/cgroup cgroup2 ' /proc/self/mounts; then
    if ! mount -o remount,rw /sys/fs/cgroup 2>/dev/null; then
        echo "execbox: /sys/fs/cgroup is read-only and could not be remounted: give the" \
            "container CAP_SYS_ADMIN and a private cgroup namespace (see deploy/README.md)" >&2
    fi
fi

exec "$@"
