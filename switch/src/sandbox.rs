//! The sandbox podwire enters once start-up is over, before it reads a byte from a guest.
//!
//! # Theory of operation
//!
//! Start-up needs the file system (the pod's routes, sysfs, resolv.conf), netlink (the
//! uplink's addresses) and, when started as root, the privilege to bind ports and the socket.
//! Serving a guest needs none of that: it needs the vhost-user socket, the memory and event
//! file descriptors the frontend sends, and sockets in the pod. So after start-up, in this
//! order, [`enter`]:
//!
//! 1. when running as root, becomes an unprivileged user (`--runas USER[:GROUP]`, `nobody` by
//!    default, as passt does): the files made at start-up (socket, pid file) are handed to it,
//!    the capability bounding set is emptied, then the groups, gid and uid are changed;
//! 2. drops every capability left (effective, permitted, inheritable and ambient), as a
//!    process started unprivileged may still hold some (file capabilities, a container's
//!    defaults);
//! 3. makes itself non-dumpable (no core dumps of guest memory, no ptrace by the same uid) and
//!    sets no_new_privs (no exec can ever give privileges back);
//! 4. restricts the file system with Landlock to removing the files it made at start-up, and
//!    nothing else: best effort, as older kernels (or kernels built without it) lack Landlock,
//!    which is logged;
//! 5. installs a seccomp filter, an allow-list of the system calls podwire makes
//!    ([`SYSCALLS`]), on every thread; any other call kills the process (SIGSYS).
//!
//! It runs on the main thread before any other thread exists, so that the Landlock domain (a
//! per-thread property) and the credentials are inherited by every thread podwire starts
//! later; the seccomp filter is synchronised to all threads anyway. Landlock offers no such
//! synchronisation on the kernels podwire runs on (Linux 6.18: ABI 7), so a thread already
//! running would stay outside the domain, and every thread it started too: start-up binds the
//! sockets of the control and metrics threads but starts those threads only afterwards, and
//! [`ensure_single_threaded`] refuses to go on when any other thread exists.
//!
//! `--no-sandbox` (for debugging with strace or gdb) skips steps 2 to 5; a root podwire still
//! becomes its `--runas` user.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The user a root podwire becomes when no `--runas` is given (passt does the same).
pub const DEFAULT_USER: &str = "nobody";

/// Every system call podwire makes after start-up, in one place. A feature that needs another
/// one adds it here, in the group it belongs to, with why (live migration, for instance, will
/// need `sendmsg` with SCM_RIGHTS, already allowed, and the mmap of a log fd, too).
///
/// Found with `strace -f` over the unit and end-to-end tests (vhost-user sessions with QEMU,
/// reconnects, UDP/TCP/ICMP translation, port forwarding, timers, logging, SIGTERM/SIGUSR1).
/// `socket` is further limited to the families podwire uses (see [`socket_rule`]).
pub const SYSCALLS: &[(&str, libc::c_long)] = &[
    // Memory: the allocator, guest memory regions (memfd mmap from the frontend), thread stacks.
    ("brk", libc::SYS_brk),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    // Threads: vhost-user-backend's worker and session threads, the relay, std's runtime.
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("futex", libc::SYS_futex),
    ("sched_yield", libc::SYS_sched_yield),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    // Credentials: the vhost-user peer check compares a frontend's uid with podwire's own.
    ("geteuid", libc::SYS_geteuid),
    ("getuid", libc::SYS_getuid),
    ("getegid", libc::SYS_getegid),
    ("getgid", libc::SYS_getgid),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    // Signals: the signal thread's sigwait; glibc's thread start and abort paths.
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("tgkill", libc::SYS_tgkill),
    // File descriptors: reads and writes on sockets, eventfds (kick/call), the timerfd.
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("ioctl", libc::SYS_ioctl),
    ("dup", libc::SYS_dup),
    ("fstat", libc::SYS_fstat),
    ("newfstatat", libc::SYS_newfstatat),
    ("statx", libc::SYS_statx),
    ("lseek", libc::SYS_lseek),
    ("eventfd2", libc::SYS_eventfd2),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    // Waiting: mio and vhost-user-backend's epoll loops, poll on the vhost-user socket.
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    // Sockets: flows in the pod, forwarded ports, the vhost-user socket and its relay.
    ("socket", libc::SYS_socket),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("connect", libc::SYS_connect),
    ("accept4", libc::SYS_accept4),
    ("shutdown", libc::SYS_shutdown),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    // sendmsg/recvmsg carry the frontend's fds (SCM_RIGHTS) and UDP GSO control messages.
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("splice", libc::SYS_splice),
    ("pipe2", libc::SYS_pipe2),
    // Time and randomness: timers, log timestamps, per-session names, TCP sequence numbers.
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("getrandom", libc::SYS_getrandom),
    // Files written after start-up: --pcap (switched on at run time, rotated by rename) and
    // --log-file (capped). Landlock limits them to those files' directories.
    ("openat", libc::SYS_openat),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("ftruncate", libc::SYS_ftruncate),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    // Process: removing the socket and pid file on SIGTERM.
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    // Threads are named with prctl(PR_SET_NAME) (see prctl_rule).
    ("prctl", libc::SYS_prctl),
];

/// What the sandbox needs to know.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// `--runas USER[:GROUP]`.
    pub runas: Option<String>,
    /// `--no-sandbox`: skip everything but the change of user.
    pub disabled: bool,
    /// Files made at start-up, handed to the new user and removable at exit.
    pub own_files: Vec<PathBuf>,
    /// Files podwire (re)creates after start-up (`--pcap`, `--log-file`): their directories
    /// stay writable under Landlock.
    pub written_files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("--runas {0}: no such user")]
    NoSuchUser(String),
    #[error("--runas {0}: no such group")]
    NoSuchGroup(String),
    #[error("--runas {0}: podwire must be started as root to change its user")]
    NotRoot(String),
    #[error("cannot become {what}: {source}")]
    Identity {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot drop capabilities: {0}")]
    Capabilities(io::Error),
    #[error("prctl({0}): {1}")]
    Prctl(&'static str, io::Error),
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("seccomp: {0}")]
    SeccompBackend(#[from] seccompiler::BackendError),
    #[error(
        "sandbox: threads {0:?} started before it and would stay outside Landlock; \
         start them after"
    )]
    ThreadsBefore(Vec<String>),
    #[error("sandbox: cannot list this process's threads: {0}")]
    Threads(io::Error),
}

/// Fails, naming them, if threads other than the calling one run: [`enter`]'s Landlock domain
/// would not reach them nor the threads they start.
pub fn ensure_single_threaded() -> Result<(), SandboxError> {
    let others = other_threads().map_err(SandboxError::Threads)?;
    if others.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::ThreadsBefore(others))
    }
}

/// The names of this process's threads other than the calling one.
pub fn other_threads() -> io::Result<Vec<String>> {
    // SAFETY: gettid cannot fail.
    let me = unsafe { libc::gettid() }.to_string();
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        if task.file_name().to_str() == Some(me.as_str()) {
            continue;
        }
        // A thread that ended since the listing has no comm left: it no longer counts.
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            names.push(comm.trim_end().to_string());
        }
    }
    Ok(names)
}

/// A user and group to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Enters the sandbox (see the module's comment). Call it once, on the main thread, before any
/// other thread is started.
pub fn enter(opts: &SandboxOptions) -> Result<(), SandboxError> {
    let target = target_identity(opts.runas.as_deref())?;
    if let Some(id) = target {
        become_user(id, &opts.own_files)?;
        tracing::info!("running as uid {} gid {}", id.uid, id.gid);
    }
    if opts.disabled {
        tracing::warn!("--no-sandbox: no seccomp filter, no Landlock, capabilities kept");
        return Ok(());
    }
    drop_capabilities()?;
    prctl("PR_SET_DUMPABLE", libc::PR_SET_DUMPABLE, 0)?;
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    // Best effort: a kernel without Landlock, or a container runtime's own seccomp profile
    // refusing its system calls, leaves the file system to the seccomp filter (which allows no
    // open at all) and the user's permissions.
    match restrict_files(&opts.own_files, &opts.written_files) {
        Ok(RulesetStatus::FullyEnforced) => tracing::debug!("landlock: fully enforced"),
        Ok(RulesetStatus::PartiallyEnforced) => {
            tracing::info!("landlock: partly enforced (an older kernel's Landlock ABI)")
        }
        Ok(RulesetStatus::NotEnforced) => {
            tracing::warn!("landlock: not supported by this kernel; file system not restricted")
        }
        Err(e) => tracing::warn!("{e}; file system not restricted by Landlock"),
    }
    let program = filter()?;
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(())
}

/// Whom to become: root becomes `runas` or [`DEFAULT_USER`]; anyone else stays who it is
/// (a `--runas` naming someone else is an error, naming oneself is fine).
fn target_identity(runas: Option<&str>) -> Result<Option<Identity>, SandboxError> {
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        return parse_runas(runas.unwrap_or(DEFAULT_USER)).map(Some);
    }
    match runas {
        None => Ok(None),
        Some(spec) => {
            let id = parse_runas(spec)?;
            if id.uid == euid && id.gid == egid {
                Ok(None)
            } else {
                Err(SandboxError::NotRoot(spec.into()))
            }
        }
    }
}

/// `USER`, `USER:GROUP`, `UID` or `UID:GID` (names looked up in the user database; a user's
/// primary group when no group is given).
pub fn parse_runas(spec: &str) -> Result<Identity, SandboxError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let no_user = || SandboxError::NoSuchUser(spec.into());
    let (uid, primary) = match user.parse::<libc::uid_t>() {
        Ok(uid) => (uid, lookup_user_by_id(uid).map(|(_, g)| g)),
        Err(_) => {
            let (uid, gid) = lookup_user(user).ok_or_else(no_user)?;
            (uid, Some(gid))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<libc::gid_t>() {
            Ok(gid) => gid,
            Err(_) => lookup_group(g).ok_or_else(|| SandboxError::NoSuchGroup(spec.into()))?,
        },
        // A numeric uid unknown to the user database gets the group of the same number.
        None => primary.unwrap_or(uid),
    };
    Ok(Identity { uid, gid })
}

fn lookup_user(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: an all-zero passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pw's strings (none).
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

fn lookup_user_by_id(uid: libc::uid_t) -> Option<(libc::uid_t, libc::gid_t)> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: an all-zero passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    (rc == 0 && !found.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

fn lookup_group(name: &str) -> Option<libc::gid_t> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: an all-zero group is a valid out-parameter.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(gr.gr_gid)
}

fn last_os_error<T>(rc: libc::c_int, what: &'static str) -> Result<T, SandboxError>
where
    T: Default,
{
    if rc == 0 {
        Ok(T::default())
    } else {
        Err(SandboxError::Identity {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

/// Root to `id`: hands over the start-up files, empties the bounding set (while root may),
/// then sets groups, gid and uid (all three of real, effective and saved, so there is no way
/// back).
fn become_user(id: Identity, own_files: &[PathBuf]) -> Result<(), SandboxError> {
    for path in own_files {
        chown(path, id);
        if !dir_writable_by(path, id) {
            tracing::warn!(
                "{}: its directory is not writable by uid {}, so it stays behind at exit",
                path.display(),
                id.uid
            );
        }
    }
    drop_bounding_set();
    // SAFETY: one gid from a valid array.
    last_os_error::<()>(unsafe { libc::setgroups(1, &id.gid) }, "the group")?;
    // SAFETY: plain id changes.
    last_os_error::<()>(
        unsafe { libc::setresgid(id.gid, id.gid, id.gid) },
        "the group",
    )?;
    // SAFETY: plain id changes.
    last_os_error::<()>(
        unsafe { libc::setresuid(id.uid, id.uid, id.uid) },
        "the user",
    )?;
    Ok(())
}

/// Whether `id` may remove `path` (write permission on its directory, by the mode bits).
fn dir_writable_by(path: &Path, id: Identity) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let mode = meta.mode();
    (meta.uid() == id.uid && mode & 0o200 != 0)
        || (meta.gid() == id.gid && mode & 0o020 != 0)
        || mode & 0o002 != 0
}

fn chown(path: &Path, id: Identity) {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid path; lchown does not follow a symlink planted at the path.
    if unsafe { libc::lchown(c.as_ptr(), id.uid, id.gid) } != 0 {
        tracing::warn!(
            "cannot hand {} to uid {}: {}",
            path.display(),
            id.uid,
            io::Error::last_os_error()
        );
    }
}

/// Empties the capability bounding set, so that nothing run later could regain a capability.
/// Needs CAP_SETPCAP; without it there is nothing to lose anyway.
fn drop_bounding_set() {
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability ends the loop.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            break;
        }
    }
}

/// Clears the ambient set and the effective, permitted and inheritable sets.
fn drop_capabilities() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments. EINVAL: a kernel without ambient capabilities.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(SandboxError::Capabilities(io::Error::last_os_error()));
    }
    drop_bounding_set();
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: version 3 takes a header and two data structs, both valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(SandboxError::Capabilities(io::Error::last_os_error()));
    }
    Ok(())
}

fn prctl(
    name: &'static str,
    option: libc::c_int,
    value: libc::c_ulong,
) -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(option, value, 0, 0, 0) } != 0 {
        return Err(SandboxError::Prctl(name, io::Error::last_os_error()));
    }
    Ok(())
}

/// Landlock: every file-system access is handled (denied) except removing files in the
/// directories of the start-up files.
fn restrict_files(
    own_files: &[PathBuf],
    written_files: &[PathBuf],
) -> Result<RulesetStatus, SandboxError> {
    let abi = ABI::V6;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?;
    let write = AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::RemoveFile | AccessFs::Truncate;
    for dir in written_files.iter().filter_map(|f| f.parent()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(fd) = PathFd::new(dir) {
            ruleset = ruleset.add_rule(PathBeneath::new(fd, write))?;
        }
    }
    for dir in own_files.iter().filter_map(|f| f.parent()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // A directory that cannot be opened simply gets no rule: its file stays at exit.
        if let Ok(fd) = PathFd::new(dir) {
            ruleset = ruleset.add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))?;
        }
    }
    Ok(ruleset.restrict_self()?.ruleset)
}

/// `socket(2)` only for the families podwire uses: UNIX (the vhost-user relay), IPv4 and IPv6
/// (flows, forwarded ports). No netlink, no packet sockets after start-up.
fn socket_rule() -> Result<Vec<SeccompRule>, SandboxError> {
    first_argument_in(&[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6])
}

/// `prctl(2)` only to name threads (std's thread builder): no capability, seccomp or
/// dumpability changes after the sandbox is entered.
fn prctl_rule() -> Result<Vec<SeccompRule>, SandboxError> {
    first_argument_in(&[libc::PR_SET_NAME, libc::PR_GET_NAME])
}

/// One rule per allowed value of the first argument (rules of a call are alternatives).
fn first_argument_in(values: &[libc::c_int]) -> Result<Vec<SeccompRule>, SandboxError> {
    values
        .iter()
        .map(|&value| {
            let cond =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value as u64)?;
            Ok(SeccompRule::new(vec![cond])?)
        })
        .collect()
}

/// Set to `log` to have the kernel log (audit type 1326, in `dmesg`) the calls missing from
/// [`SYSCALLS`] instead of killing podwire: for finding what a new feature needs in one run.
pub const AUDIT_ENV: &str = "PODWIRE_SECCOMP_AUDIT";

fn mismatch_action() -> SeccompAction {
    if std::env::var(AUDIT_ENV).is_ok_and(|v| v == "log") {
        tracing::warn!(
            "{AUDIT_ENV}=log: calls outside the seccomp allow-list are logged, not fatal"
        );
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    }
}

/// The seccomp program: [`SYSCALLS`] allowed, anything else kills the process.
pub fn filter() -> Result<BpfProgram, SandboxError> {
    let mut rules = std::collections::BTreeMap::new();
    for &(_, nr) in SYSCALLS {
        let conditions = match nr {
            libc::SYS_socket => socket_rule()?,
            libc::SYS_prctl => prctl_rule()?,
            _ => Vec::new(),
        };
        rules.insert(nr, conditions);
    }
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(seccompiler::Error::Backend)?;
    let filter = SeccompFilter::new(rules, mismatch_action(), SeccompAction::Allow, arch)?;
    Ok(filter.try_into()?)
}

#[cfg(test)]
#[path = "sandbox_tests.rs"]
mod tests;
