//! The document reader's confinement. The child (`companero extract`) applies it to itself
//! before it reads a single untrusted byte, so that a parser exploited by a hostile file finds
//! no files, no network, no programs and no other process to reach.
//!
//! Layers, in order:
//! - resource limits (address space, CPU time, no core dumps);
//! - every inherited descriptor above stderr closed (a C library in the parent may have left
//!   one without close-on-exec);
//! - Landlock, best effort: no filesystem access at all, no TCP bind/connect, no signals or
//!   abstract Unix sockets outside the child. It is a second wall; the kernel may lack it;
//! - seccomp (required on Linux): the system calls that open files, create sockets, run
//!   programs, fork, trace or signal other processes, or change the system fail with EPERM.
//!   They fail rather than kill, so the child can still report what went wrong as JSON.
//!
//! The filter is a deny list on top of "allow": the parsers' needs (memory, threads, reading
//! stdin, writing stdout) differ by library and version, and an allow list that misses one
//! turns every upload into a failure. What is denied is everything that reaches outside the
//! process; Landlock closes the same doors a second time where the kernel has it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What confinement is in force in the child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// The seccomp filter is installed.
    pub seccomp: bool,
    /// `fully_enforced`, `partially_enforced`, `not_enforced` (kernel without Landlock) or
    /// `unavailable` (not Linux).
    pub landlock: String,
}

/// Applies every layer to the calling process. Fails closed: a child that cannot install its
/// seccomp filter refuses to read the document.
pub fn confine(memory_bytes: u64, cpu_seconds: u64) -> anyhow::Result<Confinement> {
    use rlimit::{Resource, setrlimit};
    setrlimit(Resource::AS, memory_bytes, memory_bytes)?;
    setrlimit(Resource::CPU, cpu_seconds, cpu_seconds + 1)?;
    // The child's working directory is `/`; a crash must not write a core file there.
    setrlimit(Resource::CORE, 0, 0)?;
    linux::confine()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;

    use anyhow::Context;
    use landlock::{ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope};
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch, sock_filter,
    };

    use super::Confinement;

    pub fn confine() -> anyhow::Result<Confinement> {
        close_inherited_descriptors();
        let landlock = landlock_everything()?;
        seccomp()?;
        Ok(Confinement {
            seccomp: true,
            landlock,
        })
    }

    fn close_inherited_descriptors() {
        // SAFETY: plain system calls on descriptors this process owns; nothing in this
        // process uses descriptors above 2 yet.
        let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        if closed != 0 {
            for fd in 3..4096 {
                unsafe { libc::close(fd) };
            }
        }
    }

    /// A ruleset that handles every access right of ABI 6 (Linux 6.12) and grants none.
    fn landlock_everything() -> anyhow::Result<String> {
        let abi = ABI::V6;
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .handle_access(AccessNet::from_all(abi))?
            .scope(Scope::from_all(abi))?
            .create()?
            .restrict_self()
            .context("Landlock")?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => "fully_enforced",
            RulesetStatus::PartiallyEnforced => "partially_enforced",
            RulesetStatus::NotEnforced => "not_enforced",
        }
        .to_string())
    }

    /// System calls that reach outside the process. Each fails with EPERM.
    fn denied() -> Vec<i64> {
        let mut calls = vec![
            // Files and mounts.
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
            libc::SYS_open_tree,
            libc::SYS_fsopen,
            libc::SYS_fsmount,
            libc::SYS_fspick,
            libc::SYS_move_mount,
            libc::SYS_mount_setattr,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_unlinkat,
            libc::SYS_renameat2,
            libc::SYS_linkat,
            libc::SYS_symlinkat,
            libc::SYS_mkdirat,
            libc::SYS_mknodat,
            libc::SYS_fchmodat,
            libc::SYS_fchownat,
            libc::SYS_truncate,
            libc::SYS_utimensat,
            libc::SYS_setxattr,
            libc::SYS_lsetxattr,
            libc::SYS_removexattr,
            libc::SYS_lremovexattr,
            libc::SYS_memfd_create,
            // Programs and other processes.
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_kcmp,
            libc::SYS_pidfd_open,
            libc::SYS_pidfd_getfd,
            libc::SYS_pidfd_send_signal,
            libc::SYS_tkill,
            // Network.
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept4,
            // Kernel interfaces a parser never needs.
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_sethostname,
            libc::SYS_setdomainname,
            libc::SYS_acct,
            libc::SYS_quotactl,
            libc::SYS_syslog,
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_clock_adjtime,
            libc::SYS_adjtimex,
            libc::SYS_fanotify_init,
        ];
        #[cfg(target_arch = "x86_64")]
        calls.extend([
            libc::SYS_open,
            libc::SYS_creat,
            libc::SYS_unlink,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_link,
            libc::SYS_symlink,
            libc::SYS_mkdir,
            libc::SYS_rmdir,
            libc::SYS_mknod,
            libc::SYS_chmod,
            libc::SYS_chown,
            libc::SYS_lchown,
            libc::SYS_utime,
            libc::SYS_utimes,
            libc::SYS_futimesat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_accept,
            libc::SYS_iopl,
            libc::SYS_ioperm,
        ]);
        calls
    }

    fn seccomp() -> anyhow::Result<()> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|e| anyhow::anyhow!("seccomp on {}: {e}", std::env::consts::ARCH))?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied()
            .into_iter()
            .map(|call| (call, Vec::new()))
            .collect();
        // Signals only to itself (abort() raises SIGABRT with tgkill on its own pid); never
        // to the server, its process group (pid 0) or every process (-1).
        let pid = std::process::id() as u64;
        let not_self = |arg| -> anyhow::Result<Vec<SeccompRule>> {
            Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                pid,
            )?])?])
        };
        rules.insert(libc::SYS_kill, not_self(0)?);
        rules.insert(libc::SYS_tgkill, not_self(0)?);
        rules.insert(libc::SYS_rt_sigqueueinfo, not_self(0)?);
        rules.insert(libc::SYS_rt_tgsigqueueinfo, not_self(0)?);
        // Threads may be created, new processes may not: `clone` without CLONE_THREAD is a fork.
        rules.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                0,
            )?])?],
        );
        let deny: seccompiler::BpfProgram = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )?
        .try_into()?;
        // clone3 passes its flags in memory, out of a filter's sight: ENOSYS makes the C
        // library fall back to clone, which the rule above checks.
        let clone3: seccompiler::BpfProgram = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?
        .try_into()?;
        // The filters above match x86-64 numbers; the x32 ABI numbers the same calls with
        // bit 30 set, so those are refused as a whole.
        #[cfg(target_arch = "x86_64")]
        seccompiler::apply_filter_all_threads(&x32_refused())?;
        seccompiler::apply_filter_all_threads(&clone3)?;
        seccompiler::apply_filter_all_threads(&deny)?;
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    fn x32_refused() -> Vec<sock_filter> {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        let statement = |code: u32, k: u32| sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        vec![
            // A = seccomp_data.nr
            statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: X32_SYSCALL_BIT,
            },
            statement(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ]
    }
}

#[cfg(not(target_os = "linux"))]
mod linux {
    use super::Confinement;

    /// Elsewhere only the resource limits apply.
    pub fn confine() -> anyhow::Result<Confinement> {
        Ok(Confinement {
            seccomp: false,
            landlock: "unavailable".into(),
        })
    }
}

/// Accesses `companero extract --probe-*` attempts after confining itself exactly as it does
/// before reading a document; the sandbox test uses them to show what the child cannot reach.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub open: Vec<PathBuf>,
    pub connect: Vec<SocketAddr>,
    pub exec: Vec<PathBuf>,
    /// Skip confinement (the test's control run: the same accesses must then succeed).
    pub unconfined: bool,
}

impl Probe {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.connect.is_empty() && self.exec.is_empty()
    }
}

/// What a probe found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReport {
    pub confinement: Option<Confinement>,
    /// Environment variables the child received.
    pub env_vars: usize,
    pub cwd: Option<PathBuf>,
    pub open: Vec<Attempt>,
    pub connect: Vec<Attempt>,
    pub exec: Vec<Attempt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub target: String,
    pub succeeded: bool,
    pub error: Option<String>,
}

fn attempt<T>(target: String, result: std::io::Result<T>) -> Attempt {
    Attempt {
        target,
        succeeded: result.is_ok(),
        error: result.err().map(|e| e.to_string()),
    }
}

/// Runs `probe` (in the child) after the same confinement a document read gets.
pub fn run_probe(probe: &Probe, memory_bytes: u64, cpu_seconds: u64) -> ProbeReport {
    let confinement = (!probe.unconfined).then(|| confine(memory_bytes, cpu_seconds));
    let confinement = match confinement {
        Some(Ok(confinement)) => Some(confinement),
        Some(Err(error)) => Some(Confinement {
            seccomp: false,
            landlock: format!("failed: {error:#}"),
        }),
        None => None,
    };
    let open = probe
        .open
        .iter()
        .map(|path| attempt(path.display().to_string(), std::fs::read(path).map(|_| ())))
        .collect();
    let connect = probe
        .connect
        .iter()
        .map(|addr| attempt(addr.to_string(), std::net::TcpStream::connect(addr)))
        .collect();
    let exec = probe
        .exec
        .iter()
        .map(|path| {
            attempt(
                path.display().to_string(),
                std::process::Command::new(path)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status(),
            )
        })
        .collect();
    ProbeReport {
        confinement,
        env_vars: std::env::vars_os().count(),
        cwd: std::env::current_dir().ok(),
        open,
        connect,
        exec,
    }
}
