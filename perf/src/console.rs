//! Drives the guest's shell over its serial console.
//!
//! The guest runs an interactive busybox `sh` on ttyS0 with terminal echo off
//! and empty prompts. [`Console::run`] sends
//!
//! ```text
//!
//! echo @@B<n>""@@
//! { <cmd>
//! } </dev/null
//! echo @@E<n>""=$?@@
//! ```
//!
//! and reads until `@@E<n>=<digits>@@` appears; the output is what came
//! between `@@B<n>@@` and that marker. The `""` make the markers as typed
//! differ from the markers as printed, so an echoing terminal cannot fake a
//! match. The command runs in the shell itself (so `cd`, variables persist)
//! with stdin from /dev/null (so it cannot swallow the end marker).
//!
//! Every byte read is kept in a transcript (also written to a log file).

use crate::util;
use anyhow::{anyhow, bail, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of the transcript an error message carries.
const ERROR_TAIL: usize = 3000;

/// A command's result: its exit code and its output (stdout and stderr
/// interleaved as the guest printed them, "\r\n" turned into "\n").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub code: i32,
    pub output: String,
}

/// The guest console.
pub struct Console {
    name: String,
    writer: Box<dyn Write + Send>,
    rx: Receiver<Vec<u8>>,
    /// received and not yet consumed
    pending: Vec<u8>,
    transcript: Arc<Mutex<Vec<u8>>>,
    log_path: Option<PathBuf>,
    seq: u64,
    eof: bool,
    failed: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("name", &self.name)
            .field("seq", &self.seq)
            .field("eof", &self.eof)
            .finish()
    }
}

impl Console {
    /// Wraps a reader (the guest's serial output) and a writer (its input).
    /// A thread copies everything read into the transcript, the log file
    /// `log_path` (if any) and, when `PODWIRE_PERF_CONSOLE=1`, stderr.
    pub fn new<R, W>(name: &str, reader: R, writer: W, log_path: Option<PathBuf>) -> Console
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let t2 = transcript.clone();
        let mut log = log_path
            .as_ref()
            .and_then(|p| std::fs::File::create(p).ok());
        let echo = std::env::var("PODWIRE_PERF_CONSOLE").is_ok_and(|v| v == "1");
        let tname = name.to_string();
        std::thread::Builder::new()
            .name(format!("console-{name}"))
            .spawn(move || {
                let mut reader = reader;
                let mut buf = vec![0u8; 16384];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let chunk = buf[..n].to_vec();
                            t2.lock().unwrap().extend_from_slice(&chunk);
                            if let Some(f) = log.as_mut() {
                                let _ = f.write_all(&chunk);
                            }
                            if echo {
                                eprint!("[{tname}] {}", String::from_utf8_lossy(&chunk));
                            }
                            if tx.send(chunk).is_err() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                // dropping tx tells the reader side about EOF
            })
            .expect("spawn console reader thread");
        Console {
            name: name.to_string(),
            writer: Box::new(writer),
            rx,
            pending: Vec::new(),
            transcript,
            log_path,
            seq: 0,
            eof: false,
            failed: false,
        }
    }

    /// Everything the console printed so far (lossy UTF-8).
    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.transcript.lock().unwrap()).into_owned()
    }

    /// The log file holding the transcript, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// Whether an operation on this console failed (timeout, EOF): the
    /// transcript should then be shown.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Forgets an expected failure (e.g. a deliberate timeout) so that the
    /// transcript is not printed for it.
    pub fn clear_failed(&mut self) {
        self.failed = false;
    }

    /// Whether the guest side has closed the console (QEMU exited).
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Prints the whole transcript to stderr.
    pub fn dump_transcript(&self) {
        eprintln!(
            "---- console transcript of {}{} ----\n{}\n---- end of console transcript of {} ----",
            self.name,
            self.log_path
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default(),
            self.transcript(),
            self.name
        );
    }

    fn error(&mut self, what: String) -> anyhow::Error {
        self.failed = true;
        anyhow!(
            "console {}: {what}\n---- last console output ----\n{}\n----",
            self.name,
            util::tail(&self.transcript(), ERROR_TAIL)
        )
    }

    /// Writes raw bytes to the guest.
    pub fn send(&mut self, data: &str) -> Result<()> {
        let r = self
            .writer
            .write_all(data.as_bytes())
            .and_then(|_| self.writer.flush());
        if let Err(e) = r {
            return Err(self.error(format!("write failed: {e}")));
        }
        Ok(())
    }

    /// Sends ^C (SIGINT to the guest shell's foreground job).
    pub fn interrupt(&mut self) -> Result<()> {
        self.send("\x03")
    }

    /// Receives more output, waiting until `deadline`. Returns false on
    /// timeout; errors on EOF.
    fn fill(&mut self, deadline: Instant, what: &str) -> Result<bool> {
        if self.eof {
            return Err(self.error(format!("console closed while waiting for {what}")));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        match self.rx.recv_timeout(deadline - now) {
            Ok(chunk) => {
                self.pending.extend_from_slice(&chunk);
                // take whatever else is already there
                while let Ok(more) = self.rx.try_recv() {
                    self.pending.extend_from_slice(&more);
                }
                Ok(true)
            }
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                Err(self.error(format!("console closed while waiting for {what}")))
            }
        }
    }

    /// Waits until `text` appears in the output not consumed yet; consumes
    /// the output up to and including it and returns that part.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let needle = text.as_bytes();
        loop {
            if let Some(pos) = find(&self.pending, needle, 0) {
                let end = pos + needle.len();
                let consumed: Vec<u8> = self.pending.drain(..end).collect();
                return Ok(normalize(&consumed));
            }
            if !self.fill(deadline, &format!("{text:?}"))? {
                return Err(self.error(format!("timed out after {timeout:?} waiting for {text:?}")));
            }
        }
    }

    /// Runs a shell command in the guest and returns its exit code and
    /// output. On timeout the command gets a ^C and an error is returned.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        self.seq += 1;
        let seq = self.seq;
        let deadline = Instant::now() + timeout;
        self.send(&wrap_command(seq, cmd))?;
        loop {
            match parse_output(seq, &self.pending) {
                Parsed::Done {
                    code,
                    output,
                    consumed,
                } => {
                    self.pending.drain(..consumed);
                    return Ok(CmdOutput { code, output });
                }
                Parsed::Incomplete { skip } => {
                    self.pending.drain(..skip);
                }
            }
            if !self.fill(deadline, &format!("command {cmd:?}"))? {
                let _ = self.interrupt();
                return Err(self.error(format!("timed out after {timeout:?} running {cmd:?}")));
            }
        }
    }

    /// Like [`run`](Self::run) but fails unless the command exits 0; returns
    /// its output.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        let r = self.run(cmd, timeout)?;
        if r.code != 0 {
            self.failed = true;
            bail!(
                "guest command {cmd:?} exited {} with output:\n{}",
                r.code,
                r.output
            );
        }
        Ok(r.output)
    }
}

impl Console {
    /// Writes a text file in the guest (through a quoted here-document, so
    /// nothing in `contents` is expanded).
    pub fn write_file(&mut self, path: &str, contents: &str, timeout: Duration) -> Result<()> {
        let delim = format!("@@EOF{}@@", self.seq + 1);
        let mut body = contents.to_string();
        if !body.ends_with('\n') && !body.is_empty() {
            body.push('\n');
        }
        let no_newline = !contents.ends_with('\n') && !contents.is_empty();
        let mut cmd = format!("cat > '{path}' <<'{delim}'\n{body}{delim}");
        if no_newline {
            // drop the newline the here-document added
            cmd.push_str(&format!(
                "\nprintf %s \"$(cat '{path}')\" > '{path}.tmp' && mv '{path}.tmp' '{path}'"
            ));
        }
        self.run_ok(&cmd, timeout)?;
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from.min(hay.len()));
    }
    if hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// "\r\n" -> "\n", lossy UTF-8.
fn normalize(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace("\r\n", "\n")
}

/// The text sent to the guest shell for command number `seq`.
pub fn wrap_command(seq: u64, cmd: &str) -> String {
    // The leading empty line ends whatever junk (a stray ^C on a non-tty)
    // may precede the command.
    format!("\necho @@B{seq}\"\"@@\n{{ {cmd}\n}} </dev/null\necho @@E{seq}\"\"=$?@@\n")
}

/// Result of scanning the console output for command `seq`'s markers.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Both markers seen: exit code, output, bytes to consume.
    Done {
        code: i32,
        output: String,
        consumed: usize,
    },
    /// Not yet; the first `skip` bytes can be dropped (they precede the
    /// begin marker and belong to nothing we wait for).
    Incomplete { skip: usize },
}

/// Scans `buf` for command `seq`'s begin and end markers.
pub fn parse_output(seq: u64, buf: &[u8]) -> Parsed {
    let begin = format!("@@B{seq}@@");
    let Some(b) = find(buf, begin.as_bytes(), 0) else {
        // keep a tail that could be the start of a split marker
        let keep = begin.len().saturating_sub(1);
        return Parsed::Incomplete {
            skip: buf.len().saturating_sub(keep),
        };
    };
    let mut start = b + begin.len();
    if buf[start..].starts_with(b"\r\n") {
        start += 2;
    } else if buf[start..].starts_with(b"\n") {
        start += 1;
    } else if buf.len() - start < 2 {
        // the line end may still come
        return Parsed::Incomplete { skip: b };
    }
    let end_prefix = format!("@@E{seq}=");
    let mut from = start;
    while let Some(e) = find(buf, end_prefix.as_bytes(), from) {
        let digits_at = e + end_prefix.len();
        let digits: Vec<u8> = buf[digits_at..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .copied()
            .collect();
        let after = digits_at + digits.len();
        if after + 2 > buf.len() {
            // marker not complete yet
            return Parsed::Incomplete { skip: b };
        }
        if !digits.is_empty() && &buf[after..after + 2] == b"@@" {
            let code: i32 = std::str::from_utf8(&digits).unwrap().parse().unwrap_or(-1);
            let mut consumed = after + 2;
            if buf[consumed..].starts_with(b"\r\n") {
                consumed += 2;
            } else if buf[consumed..].starts_with(b"\n") {
                consumed += 1;
            }
            return Parsed::Done {
                code,
                output: normalize(&buf[start..e]),
                consumed,
            };
        }
        from = e + 1;
    }
    Parsed::Incomplete { skip: b }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn wrap_is_what_the_shell_gets() {
        assert_eq!(
            wrap_command(7, "ls /"),
            "\necho @@B7\"\"@@\n{ ls /\n} </dev/null\necho @@E7\"\"=$?@@\n"
        );
    }

    #[test]
    fn parses_complete_output() {
        let buf = b"junk\r\n@@B3@@\r\nhello\r\nworld\r\n@@E3=0@@\r\nrest";
        match parse_output(3, buf) {
            Parsed::Done {
                code,
                output,
                consumed,
            } => {
                assert_eq!(code, 0);
                assert_eq!(output, "hello\nworld\n");
                assert_eq!(&buf[consumed..], b"rest");
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn output_without_trailing_newline_and_codes() {
        let buf = b"@@B1@@\nabc@@E1=127@@\n";
        assert_eq!(
            parse_output(1, buf),
            Parsed::Done {
                code: 127,
                output: "abc".into(),
                consumed: buf.len()
            }
        );
        let buf = b"@@B2@@\r\n@@E2=1@@";
        assert_eq!(
            parse_output(2, buf),
            Parsed::Done {
                code: 1,
                output: "".into(),
                consumed: buf.len()
            }
        );
    }

    #[test]
    fn ignores_other_commands_and_echoed_markers() {
        // a stale command 1 and an echo of what was typed for command 2
        let buf =
            b"@@B1@@\nold\n@@E1=0@@\necho @@B2\"\"@@\n@@B2@@\nnew\necho @@E2\"\"=$?@@\n@@E2=5@@\n";
        match parse_output(2, buf) {
            Parsed::Done { code, output, .. } => {
                assert_eq!(code, 5);
                assert_eq!(output, "new\necho @@E2\"\"=$?@@\n");
            }
            p => panic!("{p:?}"),
        }
        // @@E12=..@@ is not command 1's end
        let buf = b"@@B1@@\n@@E12=0@@\n";
        assert!(matches!(
            parse_output(1, buf),
            Parsed::Incomplete { skip: 0 }
        ));
        // but @@B12@@ contains no @@B1@@ either
        let buf = b"@@B12@@\nx\n@@E12=0@@\n";
        assert!(matches!(parse_output(1, buf), Parsed::Incomplete { .. }));
    }

    #[test]
    fn incomplete_markers_wait() {
        for buf in [
            &b"@@B4@@\r\nout\r\n@@E4="[..],
            b"@@B4@@\r\nout\r\n@@E4=1",
            b"@@B4@@\r\nout\r\n@@E4=12@",
            b"@@B4@@",
            b"@@B4@@\r",
        ] {
            assert!(
                matches!(parse_output(4, buf), Parsed::Incomplete { skip: 0 }),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        // before the begin marker arrives, all but a possible marker prefix is skippable
        let buf = b"kernel noise here @@B";
        match parse_output(4, buf) {
            Parsed::Incomplete { skip } => assert_eq!(&buf[skip..], b"e @@B"),
            p => panic!("{p:?}"),
        }
    }

    /// The whole Console against a local busybox-like shell (no QEMU).
    fn local_shell() -> (std::process::Child, Console) {
        let mut child = Command::new("sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let inp = child.stdin.take().unwrap();
        // sh -c style: merge stderr into stdout for the test via exec
        let mut c = Console::new("local", out, inp, None);
        c.send("exec 2>&1\n").unwrap();
        (child, c)
    }

    #[test]
    fn console_runs_commands_in_a_real_shell() {
        let (mut child, mut c) = local_shell();
        let t = Duration::from_secs(10);
        let r = c.run("echo hello", t).unwrap();
        assert_eq!(
            r,
            CmdOutput {
                code: 0,
                output: "hello\n".into()
            }
        );
        let r = c.run("echo oops >&2; false", t).unwrap();
        assert_eq!(r.code, 1);
        assert_eq!(r.output, "oops\n");
        // state persists, stdin is /dev/null
        c.run_ok("X=42; cd /", t).unwrap();
        assert_eq!(c.run_ok("echo $X; pwd; cat", t).unwrap(), "42\n/\n");
        // multi-line commands and no trailing newline
        assert_eq!(c.run_ok("printf a\nprintf b", t).unwrap(), "ab");
        assert!(c.run_ok("exit_code() { return 3; }; exit_code", t).is_err());
        let f = format!("/tmp/podwire-console-test-{}", crate::util::unique_id());
        c.write_file(&f, "a $HOME `x`\n\\n", t).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a $HOME `x`\n\\n");
        c.write_file(&f, "no newline", t).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "no newline");
        c.run_ok(&format!("rm {f}"), t).unwrap();
        c.send("echo MARK-1\n").unwrap();
        assert!(c.wait_for("MARK-1", t).unwrap().ends_with("MARK-1"));
        let e = c.wait_for("never", Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("MARK-1"), "{e}");
        assert!(c.failed());
        // a timed-out command does not confuse the next one
        assert!(c
            .run("sleep 0.3; echo late", Duration::from_millis(20))
            .is_err());
        let r = c.run("echo next", t).unwrap();
        assert_eq!(r.output, "next\n");
        assert!(c.transcript().contains("hello"));
        drop(c);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn console_reports_eof() {
        let (mut child, mut c) = local_shell();
        let e = c.run("exit 0", Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        assert!(c.is_eof());
        let _ = child.wait();
    }
}
