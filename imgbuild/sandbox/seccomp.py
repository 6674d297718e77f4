"""Docker's default seccomp profile, as the ``linux.seccomp`` section of a runc config.

A RUN step gets the filter ``docker run`` and BuildKit give a container by
default: every syscall not listed fails with EPERM; the ordinary ones are
allowed; some are allowed only with the capability that makes them useful
(``mount`` with CAP_SYS_ADMIN, ``chroot`` with CAP_SYS_CHROOT, ...), so with
Docker's default capabilities ``unshare``, ``mount``, ``setns``, ``keyctl``,
``add_key``, ``bpf``, ``ptrace`` of other users' processes and the rest stay
refused, even inside a user namespace the step could otherwise create.

The lists are facts about Docker's profile (moby's ``profiles/seccomp``, as of
2026, which also blocks io_uring and AF_ALG sockets), kept here as data in our
own form: one set of names always allowed, a few rules with argument checks,
and tables keyed by architecture and by capability. ``default_profile`` turns
them into the section for this host. Names the installed libseccomp does not
know are skipped by runc, as Docker's daemon skips them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from imgbuild.dataclass import dataclass

# Allowed for every process, whatever its capabilities.
ALWAYS_ALLOWED = frozenset(
    """
    accept accept4 access adjtimex alarm
    bind brk
    cachestat capget capset chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres
    clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64
    close close_range connect copy_file_range creat
    dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group
    faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
    fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
    fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64
    futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
    get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid
    geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid
    getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
    getrusage getsid getsockname getsockopt gettid gettimeofday getuid getuid32 getxattr
    getxattrat
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit ioctl ioprio_get
    ioprio_set ipc
    kill
    landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr
    link linkat listen listmount listxattr listxattrat llistxattr _llseek lremovexattr lseek
    lsetxattr lstat lstat64
    madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
    mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
    mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
    name_to_handle_at nanosleep newfstatat _newselect
    open openat openat2
    pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
    ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2
    read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall
    riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
    sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr sched_getparam
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
    sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget
    semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
    set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32
    setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32
    setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt
    setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd
    signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64
    statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo
    tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64 times tkill truncate truncate64
    ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes
    vfork vmsplice
    wait4 waitid waitpid write writev
    """.split()
)

# ptrace and friends are safe for unprivileged use from Linux 4.8 on (before
# that, ptrace could bypass seccomp).
PTRACE_SYSCALLS = ("process_vm_readv", "process_vm_writev", "ptrace")
PTRACE_MIN_KERNEL = (4, 8)

# Allowed only to a process holding the capability (what the syscall needs anyway).
BY_CAPABILITY = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mount",
        "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
        "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """A host architecture: its Go name (Docker's tables use those), the seccomp
    architectures a process may use on it, and syscalls only it has."""

    name: str
    seccomp: tuple[str, ...]
    extra_syscalls: tuple[str, ...] = ()


_ARM_EXTRAS = (
    "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
    "set_tls",
)  # fmt: skip

# By ``uname -m``. 32-bit programs on a 64-bit host (x86 and x32 on x86_64,
# arm on aarch64) are filtered by the same rules, as in Docker.
ARCHITECTURES = {
    "x86_64": Architecture(
        "amd64", ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"), ("arch_prctl", "modify_ldt")
    ),
    "i686": Architecture("386", ("SCMP_ARCH_X86",), ("modify_ldt",)),
    "aarch64": Architecture("arm64", ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"), _ARM_EXTRAS),
    "armv7l": Architecture("arm", ("SCMP_ARCH_ARM",), _ARM_EXTRAS),
    "ppc64le": Architecture("ppc64le", ("SCMP_ARCH_PPC64LE",), ("sync_file_range2", "swapcontext")),
    "s390x": Architecture(
        "s390x",
        ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
        ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    ),
    # runc 1.1 does not name riscv64 in a profile: the filter is for the native
    # architecture only, which is what an empty list means.
    "riscv64": Architecture("riscv64", (), ("riscv_flush_icache",)),
}

# clone(2) may not make namespaces without CAP_SYS_ADMIN.
_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x02000000  # CLONE_NEWCGROUP
)
# personality(2) personas allowed: Linux, PER_LINUX32, UNAME26, both, and the query.
_PERSONAS = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
_AF_ALG = 38
_AF_VSOCK = 40


def default_profile(
    capabilities: Iterable[str], *, machine: str | None = None, kernel: str | None = None
) -> dict:
    """The ``linux.seccomp`` section for a process with ``capabilities``.

    ``machine`` (``uname -m``) and ``kernel`` (``uname -r``) default to this host's.
    """
    uname = os.uname()
    machine = machine or uname.machine
    kernel = kernel or uname.release
    capabilities = set(capabilities)
    architecture = ARCHITECTURES.get(machine, Architecture(machine, ()))
    allowed = set(ALWAYS_ALLOWED) | set(architecture.extra_syscalls)
    if _kernel_version(kernel) >= PTRACE_MIN_KERNEL:
        allowed |= set(PTRACE_SYSCALLS)
    for capability, names in BY_CAPABILITY.items():
        if capability in capabilities:
            allowed |= set(names)
    rules = [_allow(sorted(allowed))]
    rules += _socket_rules() + _personality_rules()
    if "CAP_SYS_ADMIN" not in capabilities:
        rules += _clone_rules(architecture)
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": list(architecture.seccomp),
        "syscalls": rules,
    }


def _allow(names: list[str], *args: dict) -> dict:
    rule = {"names": names, "action": "SCMP_ACT_ALLOW"}
    if args:
        rule["args"] = list(args)
    return rule


def _arg(index: int, op: str, value: int, value_two: int = 0) -> dict:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _socket_rules() -> list[dict]:
    # Every address family but AF_ALG (kernel crypto) and AF_VSOCK (host
    # sockets); the two are two apart, so three ranges cover the rest.
    return [
        _allow(["socket"], _arg(0, "SCMP_CMP_LT", _AF_ALG)),
        _allow(["socket"], _arg(0, "SCMP_CMP_EQ", _AF_ALG + 1)),
        _allow(["socket"], _arg(0, "SCMP_CMP_GT", _AF_VSOCK)),
    ]


def _personality_rules() -> list[dict]:
    return [_allow(["personality"], _arg(0, "SCMP_CMP_EQ", persona)) for persona in _PERSONAS]


def _clone_rules(architecture: Architecture) -> list[dict]:
    # s390 passes clone's flags second. clone3 passes them in memory, where a
    # filter cannot look: it fails with ENOSYS so that libc falls back to clone.
    flags_index = 1 if architecture.name == "s390x" else 0
    return [
        _allow(["clone"], _arg(flags_index, "SCMP_CMP_MASKED_EQ", _NAMESPACE_FLAGS, 0)),
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]


def _kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a ``uname -r`` string such as ``6.1.0-18-amd64``."""
    parts = []
    for piece in release.split(".")[:2]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]
