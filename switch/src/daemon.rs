//! The process's life as passt's: to the background once ready, a pid file written safely, a
//! log file with a size cap.
//!
//! # Theory of operation
//!
//! libvirt (and anyone who starts passt) runs the backend and waits for that command to exit:
//! exit status 0 means "the socket listens and the pid file names the process serving it";
//! anything else fails the start, with the backend's stderr as the reason. So unless
//! `--foreground`, [`daemonize`] forks before any thread exists: the parent only waits on a
//! pipe. The child sets everything up, writing its errors to the inherited stderr, and exits
//! non-zero on failure; the parent then exits with the child's status. Once ready the child
//! points its standard descriptors at `/dev/null` — a caller that reads stderr to its end
//! (libvirt does) must not wait for the daemon — and only then writes one byte to the pipe, on
//! which the parent exits 0.
//!
//! The pid file is written to a new file beside it (`O_EXCL | O_NOFOLLOW`) and renamed over the
//! final name, so a symlink planted at that name is replaced, never followed, and a reader never
//! sees a half-written pid.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The byte the ready child sends its waiting parent.
const READY: u8 = b'R';

/// The child's end of the pipe its parent waits on.
pub struct ReadyPipe(OwnedFd);

/// What `daemonize` returns in each process: the parent never returns.
pub fn daemonize() -> io::Result<ReadyPipe> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: called before any thread exists (main calls this first), so the child is a
    // faithful copy of a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        drop(write_end);
        parent_waits(read_end, pid);
    }
    drop(read_end);
    // A new session: the caller's terminal or process group signals are not ours.
    // SAFETY: setsid has no memory effects; it fails only if already a group leader.
    unsafe { libc::setsid() };
    Ok(ReadyPipe(write_end))
}

/// Exits 0 when the child says it is ready, else with the child's own status.
fn parent_waits(read_end: OwnedFd, child: libc::pid_t) -> ! {
    let mut pipe = File::from(read_end);
    let mut byte = [0u8; 1];
    let ready = loop {
        match pipe.read(&mut byte) {
            Ok(1) => break byte[0] == READY,
            Ok(_) => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    if ready {
        std::process::exit(0);
    }
    let mut status = 0;
    // SAFETY: waits for our own child; status is a valid out-parameter.
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    let code = if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    std::process::exit(code);
}

impl ReadyPipe {
    /// Detaches from the caller's stdio and tells the parent to exit 0.
    pub fn notify(self) -> io::Result<()> {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays valid during the call.
            if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        File::from(self.0).write_all(&[READY])
    }
}

/// Writes `pid` to `path` without following a symlink there and without a reader ever seeing
/// a partial file: a fresh file beside it, then a rename over the final name.
pub fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{pid}.tmp"));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A log file that holds at most `cap` bytes: when the next line would pass the cap, the file
/// starts over with a line saying so (a long-running backend must not fill the disk).
pub struct CappedLog {
    file: Mutex<File>,
    written: AtomicU64,
    cap: u64,
}

impl CappedLog {
    pub fn open(path: &Path, cap: u64) -> io::Result<CappedLog> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(CappedLog {
            file: Mutex::new(file),
            written: AtomicU64::new(written),
            cap,
        })
    }

    fn write_line(&self, buf: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let len = buf.len() as u64;
        if self.written.load(Ordering::Relaxed) + len > self.cap {
            file.set_len(0)?;
            let note = b"podwire: log restarted: --log-size reached\n";
            file.write_all(note)?;
            self.written.store(note.len() as u64, Ordering::Relaxed);
        }
        // A single line longer than the whole cap is cut to fit.
        let room = self
            .cap
            .saturating_sub(self.written.load(Ordering::Relaxed));
        let part = &buf[..buf.len().min(room as usize)];
        file.write_all(part)?;
        self.written.fetch_add(part.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// tracing's writer for one event: the formatted line is buffered and written at once, so the
/// cap is checked per line.
pub struct CappedLogLine<'a> {
    log: &'a CappedLog,
    line: Vec<u8>,
}

impl Write for CappedLogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let line = std::mem::take(&mut self.line);
        self.log.write_line(&line)
    }
}

impl Drop for CappedLogLine<'_> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CappedLog {
    type Writer = CappedLogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedLogLine {
            log: self,
            line: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("podwire-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn pid_file_replaces_a_planted_symlink_instead_of_following_it() {
        let dir = temp_dir("pid");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let pid_file = dir.join("podwire.pid");
        std::os::unix::fs::symlink(&victim, &pid_file).unwrap();
        write_pid_file(&pid_file, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!std::fs::symlink_metadata(&pid_file)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "4242\n");
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid_file_in_a_missing_directory_is_an_error() {
        let dir = temp_dir("pid-missing");
        assert!(write_pid_file(&dir.join("nope/podwire.pid"), 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_file_never_passes_its_cap() {
        let dir = temp_dir("log");
        let path = dir.join("podwire.log");
        let log = CappedLog::open(&path, 4096).unwrap();
        let line = [b'x'; 99];
        for _ in 0..200 {
            let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&log);
            w.write_all(&line).unwrap();
            w.write_all(b"\n").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 4096, "{}", text.len());
        assert!(text.starts_with("podwire: log restarted"));
        // A line longer than the cap is cut, not a reason to exceed it.
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&log);
        w.write_all(&[b'y'; 10_000]).unwrap();
        drop(w);
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
