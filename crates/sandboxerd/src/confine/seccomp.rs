//! The seccomp filter every process of an `ext.local` sandbox runs under:
//! handed to bubblewrap (`--add-seccomp-fd`, which loads it for the
//! sandbox's init and everything under it) and loaded by
//! [`super::enter`] for commands entered from the host.
//!
//! A deny-list over the default-allow, in the spirit of the container
//! runtimes' default profile: the calls that reach kernel features a tenant
//! never needs and that have been the way out of containers before (mounts,
//! file handles, module loading, kexec, BPF, perf, keyrings, ptrace, new user
//! namespaces, io_uring, clock and swap changes). Denied calls fail with
//! `EPERM`; `clone3` fails with `ENOSYS` so the C library falls back to
//! `clone`, whose flags a filter can inspect (`clone3` passes them in
//! memory); x32 system calls (numbers with bit 30 set, which a deny-list by
//! number would otherwise miss) fail with `ENOSYS`; 32-bit (`int 0x80`)
//! calls kill the process, as seccompiler's architecture check does.
use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// System calls denied outright, by name (for docs and tests) and number.
pub const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("setns", libc::SYS_setns),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
];

/// The named switches a profile's `security.allow` may give, and the calls
/// of [`DENIED`] each one allows. Nothing else can be relaxed: mounts, file
/// handles, modules, kexec, BPF, keyrings and new user namespaces stay
/// denied whatever a profile says.
pub const SWITCHES: &[(&str, &[&str])] = &[
    (
        "ptrace",
        &["ptrace", "process_vm_readv", "process_vm_writev"],
    ),
    ("perf", &["perf_event_open"]),
    (
        "io_uring",
        &["io_uring_setup", "io_uring_enter", "io_uring_register"],
    ),
];

/// Checks `allow` names known switches; answers them sorted, once each.
pub fn switches(allow: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for (i, name) in allow.iter().enumerate() {
        if !SWITCHES.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = SWITCHES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "field `security.allow[{i}]`: `{name}` is not one of {}",
                known.join(", ")
            ));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// `unshare` and `clone` are denied only with `CLONE_NEWUSER` in their flags:
/// a new user namespace would give the process every capability again
/// (inside it), and with them the whole kernel surface this filter and the
/// dropped capabilities keep away.
const NEWUSER_GATED: &[(&str, i64)] = &[("unshare", libc::SYS_unshare), ("clone", libc::SYS_clone)];

/// Why the filter could not be built (an architecture seccompiler does not
/// know, or a rule it refused).
#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter: {0}")]
pub struct FilterError(String);

/// The programs to load, in order: the main deny-list, then the `ENOSYS`
/// program for `clone3` and x32 calls.
pub fn programs() -> Result<Vec<BpfProgram>, FilterError> {
    programs_allowing(&[])
}

/// [`programs`] with the calls of the named [`SWITCHES`] allowed (unknown
/// names allow nothing).
pub fn programs_allowing(allow: &[String]) -> Result<Vec<BpfProgram>, FilterError> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| FilterError(format!("{e:?}")))?;
    let relaxed: Vec<&str> = SWITCHES
        .iter()
        .filter(|(n, _)| allow.iter().any(|a| a == n))
        .flat_map(|(_, calls)| calls.iter().copied())
        .collect();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (name, nr) in DENIED {
        if relaxed.contains(name) {
            continue;
        }
        // An empty rule list matches the call whatever its arguments.
        rules.insert(*nr, Vec::new());
    }
    let newuser = libc::CLONE_NEWUSER as u64;
    for (_, nr) in NEWUSER_GATED {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(newuser),
            newuser,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| FilterError(format!("{e:?}")))?;
        rules.insert(*nr, vec![cond]);
    }
    let deny = compile(rules, libc::EPERM, arch)?;
    let mut enosys = compile(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
        arch,
    )?;
    if arch == TargetArch::x86_64 {
        // Prepend: x32 calls (bit 30 set) answer ENOSYS before anything else.
        let mut x32 = x32_guard();
        x32.append(&mut enosys);
        enosys = x32;
    }
    Ok(vec![deny, enosys])
}

/// One program: the calls of `rules` fail with `errno`, every other is allowed.
fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, FilterError> {
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| FilterError(format!("{e:?}")))
}

/// `nr & __X32_SYSCALL_BIT` → `ENOSYS`; anything else falls through to the
/// rest of the program. The architecture is checked first: this prefix only
/// runs for x86_64 calls (others are left to the program's own check).
fn x32_guard() -> Vec<sock_filter> {
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // A = seccomp_data.arch
        op(BPF_LD_W_ABS, 0, 0, 4),
        // not x86_64: skip the next three (to the rest of the program)
        op(BPF_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        // A = seccomp_data.nr
        op(BPF_LD_W_ABS, 0, 0, 0),
        // bit 30 clear: skip the return
        op(BPF_JSET_K, 0, 1, X32_SYSCALL_BIT),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]
}

/// A program as the bytes of `struct sock_filter[]`, as bubblewrap reads it
/// from `--add-seccomp-fd`.
pub fn to_bytes(program: &[sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for ins in program {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

/// Load every program on the calling thread (after `no_new_privs`).
pub fn apply(programs: &[BpfProgram]) -> Result<(), FilterError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| FilterError(format!("{e:?}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_for_this_machine_and_serializes() {
        let progs = programs().expect("filter");
        assert_eq!(progs.len(), 2);
        for p in &progs {
            assert!(!p.is_empty());
            assert_eq!(to_bytes(p).len(), p.len() * 8);
        }
    }
}
