"""The seccomp section the sandbox gives runc: Docker's default profile for a host."""

from __future__ import annotations

from imgbuild.sandbox.runtime import DEFAULT_CAPABILITIES
from imgbuild.sandbox.seccomp import ALWAYS_ALLOWED, default_profile


def _allowed(profile: dict) -> set[str]:
    """Names allowed without conditions on their arguments."""
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for name in rule["names"]
    }


def _rules_for(profile: dict, name: str) -> list[dict]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def test_default_capabilities_on_x86_64():
    profile = default_profile(DEFAULT_CAPABILITIES, machine="x86_64", kernel="6.1.0-18-amd64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1  # EPERM, as Docker
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = _allowed(profile)
    assert ALWAYS_ALLOWED <= allowed
    assert {"arch_prctl", "modify_ldt", "chroot", "ptrace"} <= allowed
    refused = {"mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf",
               "reboot", "init_module", "kexec_load", "open_by_handle_at", "io_uring_setup",
               "perf_event_open", "syslog", "clone", "clone3", "personality", "socket"}  # fmt: skip
    assert not refused & allowed
    # clone only without namespace flags; clone3 fails with ENOSYS so libc falls back to it
    assert _rules_for(profile, "clone") == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    assert _rules_for(profile, "clone3") == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    ]
    personas = [rule["args"][0]["value"] for rule in _rules_for(profile, "personality")]
    assert personas == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    sockets = [rule["args"][0] for rule in _rules_for(profile, "socket")]
    assert [(arg["op"], arg["value"]) for arg in sockets] == [
        ("SCMP_CMP_LT", 38), ("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40),
    ]  # fmt: skip


def test_capabilities_open_their_syscalls():
    profile = default_profile(
        [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_TIME"], machine="x86_64", kernel="6.1"
    )
    allowed = _allowed(profile)
    assert {"mount", "unshare", "setns", "clone", "clone3", "settimeofday"} <= allowed
    for name in ("clone", "clone3"):  # no argument checks, no ENOSYS: allowed outright
        assert all(
            rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
            for rule in _rules_for(profile, name)
        )
    without_chroot = default_profile([], machine="x86_64", kernel="6.1")
    assert "chroot" not in _allowed(without_chroot)


def test_architectures_and_kernels():
    s390 = default_profile(DEFAULT_CAPABILITIES, machine="s390x", kernel="5.10")
    assert s390["architectures"] == ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"]
    assert _rules_for(s390, "clone")[0]["args"][0]["index"] == 1  # s390 passes the flags second
    assert "s390_runtime_instr" in _allowed(s390)
    arm = default_profile(DEFAULT_CAPABILITIES, machine="aarch64", kernel="5.10")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert {"set_tls", "cacheflush"} <= _allowed(arm)
    assert "arch_prctl" not in _allowed(arm)
    unknown = default_profile(DEFAULT_CAPABILITIES, machine="sparc64", kernel="6.1")
    assert unknown["architectures"] == []  # the native architecture only
    old_kernel = default_profile(DEFAULT_CAPABILITIES, machine="x86_64", kernel="4.4.0-210-generic")
    assert "ptrace" not in _allowed(old_kernel)
