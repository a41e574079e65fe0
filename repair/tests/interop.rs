//! The repair channel against real helpers (our `podwire-repair`, and passt's `passt-repair`
//! when it is available), and a full dump → close → restore of a live loopback connection
//! whose peer never notices: every byte arrives once, in order, in both directions.
//!
//! Needs CAP_NET_ADMIN for the helper (the tests run as root, as the netns e2e tests do).

use podwire_repair::{RepairChannel, RepairCmd, RepairError, TcpDump};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const PASST_REPAIR_BUILT: &str = "/work/passt-src/passt-2025_05_03.587980c/passt-repair";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

struct Helper {
    child: Child,
    channel: RepairChannel,
    _dir: PathBuf,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_helper(binary: &Path, name: &str) -> Helper {
    let dir = std::env::temp_dir().join(format!("podwire-repair-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = RepairChannel::default_path(&dir.join("vhost.sock"));
    assert!(path.to_string_lossy().ends_with("vhost.sock.repair"));
    let mut channel = RepairChannel::bind(&path).unwrap();
    let child = Command::new(binary).arg(&path).spawn().unwrap();
    assert!(
        channel.wait_for_helper(Duration::from_secs(20)).unwrap(),
        "helper did not connect"
    );
    Helper {
        child,
        channel,
        _dir: dir,
    }
}

/// podwire's own helper on a channel of its own, or None (with a SKIP line) when not root:
/// the helper needs CAP_NET_ADMIN.
fn own_helper(name: &str) -> Option<Helper> {
    if !is_root() {
        eprintln!("SKIP: the repair helper needs CAP_NET_ADMIN; run as root");
        return None;
    }
    Some(start_helper(
        Path::new(env!("CARGO_BIN_EXE_podwire-repair")),
        name,
    ))
}

/// A connected IPv4 loopback pair and the listener that accepted it.
fn loopback_pair() -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (listener, client, server)
}

/// An int socket option of `sock`.
fn int_option(sock: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut v: libc::c_int = -2;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v is a writable int of len bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    v
}

fn repair_flag(sock: &impl AsRawFd) -> libc::c_int {
    int_option(sock, libc::SOL_TCP, libc::TCP_REPAIR)
}

/// The segment size a connected socket sends with (`TCP_MAXSEG` outside repair mode).
fn mss_of(sock: &impl AsRawFd) -> libc::c_int {
    int_option(sock, libc::SOL_TCP, libc::TCP_MAXSEG)
}

/// A blocking TCP connection to `to` whose SYN announces `mss`.
fn connect_with_mss(to: std::net::SocketAddr, mss: libc::c_int) -> TcpStream {
    use std::os::fd::FromRawFd;
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: mss is a readable int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let (ss, len) = podwire_repair::raw_sockaddr(&to);
    // SAFETY: ss holds a valid sockaddr of len bytes.
    let rc = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    TcpStream::from(owned)
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Moves a live connection from one socket to a new one through `helper`, with data queued
/// both ways at the moment of the move, and checks the stream continues on both ends.
fn migrate_live_connection(helper: &mut Helper, loopback: &str) {
    // Between closing the old socket and binding the new one its port is free, and another
    // test in this process could be handed it as an ephemeral port: one move at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let listener = TcpListener::bind(loopback).unwrap();
    // An Ethernet-sized MSS, as in a pod (loopback's own is beyond what TCP_MAXSEG takes).
    let client = connect_with_mss(listener.local_addr().unwrap(), 1400);
    let (mut server, _) = listener.accept().unwrap();
    // Fill the client's send queue (the server does not read, and a small receive buffer
    // closes its window) and leave bytes in the client's receive queue.
    let sent = fill_send_queue(&client);
    // As podwire does: peeks start past what earlier MSG_PEEKs returned, so the dump must
    // not start its peek there.
    let zero: libc::c_int = 0;
    // SAFETY: zero is a readable int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(rc, 0);
    server.write_all(b"from-server-before").unwrap();
    let mut probe = [0u8; 18];
    // Wait (bounded) for the server's bytes to reach the client's receive queue.
    client.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut peeked = 0;
    while peeked < probe.len() {
        let n = client.peek(&mut probe[peeked..]).unwrap();
        assert!(n > 0);
        peeked += n;
    }

    let segment_size = mss_of(&client);
    helper
        .channel
        .set(&[client.as_fd()], RepairCmd::On)
        .unwrap();
    assert_eq!(repair_flag(&client), 1);
    let dump = TcpDump::dump(client.as_fd()).unwrap();
    assert_eq!(dump.recv_queue, b"from-server-before");
    assert!(!dump.send_queue.is_empty());
    let mut record = Vec::new();
    dump.encode(&mut record);
    let dump = TcpDump::decode(&record).unwrap();
    // Closing in repair mode sends nothing: the server sees no FIN and no RST.
    drop(client);

    let sock = dump.new_socket().unwrap();
    helper.channel.set(&[sock.as_fd()], RepairCmd::On).unwrap();
    dump.restore_in_repair(sock.as_fd()).unwrap();
    helper.channel.set(&[sock.as_fd()], RepairCmd::Off).unwrap();
    // The server reads concurrently: the unsent tail can exceed the fresh send buffer.
    let total = sent + 1000;
    let reader = std::thread::spawn(move || {
        server
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let mut seen = 0usize;
        while seen < total {
            let n = server.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "server saw end of stream after {seen} of {total} bytes"
            );
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(seen + i), "byte {} differs", seen + i);
            }
            seen += n;
        }
        server
    });
    let taken = dump.finish(sock.as_fd()).unwrap();
    let mut restored = TcpStream::from(sock);
    restored.set_nonblocking(false).unwrap();
    restored
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    restored
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(repair_flag(&restored), 0);
    assert_eq!(restored.local_addr().unwrap(), dump.local);
    assert_eq!(
        mss_of(&restored),
        segment_size,
        "the rebuilt socket's segment size"
    );
    restored.write_all(&dump.unsent_tail()[taken..]).unwrap();

    // The bytes queued before the move are there on the new socket.
    let mut got = [0u8; 18];
    restored.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from-server-before");
    // The new socket keeps sending the same stream: the server reads every byte once.
    let tail: Vec<u8> = (sent..sent + 1000).map(pattern).collect();
    restored.write_all(&tail).unwrap();
    let mut server = reader.join().unwrap();
    // And the server's new bytes reach the new socket.
    server.write_all(b"from-server-after").unwrap();
    let mut after = [0u8; 17];
    restored.read_exact(&mut after).unwrap();
    assert_eq!(&after, b"from-server-after");
}

#[test]
fn podwire_repair_helper_migrates_a_live_connection() {
    let Some(mut helper) = own_helper("own") else {
        return;
    };
    migrate_live_connection(&mut helper, "127.0.0.1:0");
    migrate_live_connection(&mut helper, "[::1]:0");
}

#[test]
fn passt_repair_helper_interoperates() {
    if !is_root() {
        eprintln!("SKIP: the repair helper needs CAP_NET_ADMIN; run as root");
        return;
    }
    let binary = std::env::var_os("PODWIRE_PASST_REPAIR")
        .map(PathBuf::from)
        .unwrap_or(PASST_REPAIR_BUILT.into());
    if !binary.exists() {
        eprintln!(
            "SKIP: passt-repair not found at {} (build it with `make passt-repair` in passt's \
             source, or set PODWIRE_PASST_REPAIR)",
            binary.display()
        );
        return;
    }
    let mut helper = start_helper(&binary, "passt");
    migrate_live_connection(&mut helper, "127.0.0.1:0");
}

#[test]
fn batches_larger_than_one_message_are_all_switched() {
    let Some(mut helper) = own_helper("batch") else {
        return;
    };
    let socks: Vec<_> = (0..300).map(|_| socket2_tcp()).collect();
    let fds: Vec<_> = socks.iter().map(|s| s.as_fd()).collect();
    helper.channel.set(&fds, RepairCmd::On).unwrap();
    assert!(socks.iter().all(|s| repair_flag(s) == 1));
    helper
        .channel
        .set(&fds, RepairCmd::OffNoWindowProbe)
        .unwrap();
    assert!(socks.iter().all(|s| repair_flag(s) == 0));
}

#[test]
fn refusals_are_errors_not_hangs() {
    // No helper connected.
    let dir = std::env::temp_dir().join(format!("podwire-repair-{}-none", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut channel = RepairChannel::bind(&dir.join("x.repair")).unwrap();
    let sock = socket2_tcp();
    assert!(matches!(
        channel.set(&[sock.as_fd()], RepairCmd::On),
        Err(RepairError::NoHelper)
    ));
    if !is_root() {
        eprintln!("SKIP (rest): the repair helper needs CAP_NET_ADMIN; run as root");
        return;
    }
    // A helper that cannot honour the batch (a UDP socket has no TCP_REPAIR) exits, and
    // podwire sees the refusal and forgets the helper.
    let mut helper = start_helper(Path::new(env!("CARGO_BIN_EXE_podwire-repair")), "refuse");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(matches!(
        helper.channel.set(&[udp.as_fd()], RepairCmd::On),
        Err(RepairError::HelperClosed)
    ));
    assert!(!helper.channel.has_helper());
    assert!(!helper.child.wait().unwrap().success());
}

fn socket2_tcp() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[test]
fn restore_where_the_address_is_missing_fails_cleanly() {
    let Some(mut helper) = own_helper("moved") else {
        return;
    };
    let (_listener, client, _server) = loopback_pair();
    helper
        .channel
        .set(&[client.as_fd()], RepairCmd::On)
        .unwrap();
    let mut dump = TcpDump::dump(client.as_fd()).unwrap();
    // The destination pod has another address: the source's local address is not there.
    dump.local = "198.18.255.254:40000".parse().unwrap();
    let sock = dump.new_socket().unwrap();
    helper.channel.set(&[sock.as_fd()], RepairCmd::On).unwrap();
    let err = dump.restore_in_repair(sock.as_fd()).unwrap_err();
    assert!(
        matches!(err, podwire_repair::RestoreError::Sys { what: "bind", .. }),
        "{err}"
    );
    // The channel is still usable for the other connections.
    helper
        .channel
        .set(&[client.as_fd()], RepairCmd::Off)
        .unwrap();
    assert_eq!(repair_flag(&client), 0);
}

#[test]
fn only_established_sockets_are_dumped() {
    let Some(mut helper) = own_helper("state") else {
        return;
    };
    let sock = socket2_tcp();
    helper.channel.set(&[sock.as_fd()], RepairCmd::On).unwrap();
    assert!(matches!(
        TcpDump::dump(sock.as_fd()),
        Err(podwire_repair::DumpError::NotEstablished(7))
    ));
}

/// The server side of a connection (accepted on a port that still has its listener, as a
/// connection on a forwarded pod port) is rebuilt on that same port: repair mode lets the
/// new socket share the listener's port, as long as nothing takes that right back (setting
/// SO_REUSEADDR after repair mode did).
#[test]
fn an_accepted_connection_moves_while_its_listener_listens() {
    let Some(mut helper) = own_helper("accepted") else {
        return;
    };
    let (listener, mut client, server) = loopback_pair();
    helper
        .channel
        .set(&[server.as_fd()], RepairCmd::On)
        .unwrap();
    let dump = TcpDump::dump(server.as_fd()).unwrap();
    assert_eq!(dump.local, listener.local_addr().unwrap());
    drop(server);

    let sock = dump.new_socket().unwrap();
    helper.channel.set(&[sock.as_fd()], RepairCmd::On).unwrap();
    dump.restore_in_repair(sock.as_fd())
        .expect("rebuilt on the listener's port");
    helper.channel.set(&[sock.as_fd()], RepairCmd::Off).unwrap();
    let mut restored = TcpStream::from(sock);
    restored.set_nonblocking(false).unwrap();
    restored
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"to-the-new-server").unwrap();
    let mut got = [0u8; 17];
    restored.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-the-new-server");
    restored.write_all(b"back").unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back");
}

/// A connected loopback pair whose client has filled its send queue (the server does not
/// read; its small receive buffer closes the window). Returns (client, server, bytes written).
fn client_with_full_send_queue() -> (TcpStream, TcpStream, usize) {
    let (_listener, client, server) = loopback_pair();
    let sent = fill_send_queue(&client);
    (client, server, sent)
}

/// Writes the stream's pattern to `client` (left non-blocking) until its send queue is full;
/// returns the bytes written.
fn fill_send_queue(client: &TcpStream) -> usize {
    client.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    loop {
        let off = sent % 251;
        let data: Vec<u8> = (off..off + 65536).map(pattern).collect();
        match (&*client).write(&data) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return sent,
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 64 << 20, "send buffer never filled");
    }
}

#[test]
fn a_dump_counts_as_sent_all_the_peer_gets_while_its_window_opens() {
    let Some(mut helper) = own_helper("window") else {
        return;
    };
    let (client, mut server, written) = client_with_full_send_queue();
    helper
        .channel
        .set(&[client.as_fd()], RepairCmd::On)
        .unwrap();
    // The server reads from now on, so its window opens while the dump is taken: a socket in
    // repair mode still transmits (and retransmits), whichever queue is selected.
    let reader = std::thread::spawn(move || {
        server
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        while let Ok(n) = server.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    });
    let dump = TcpDump::dump(client.as_fd()).unwrap();
    // Closed in repair mode right after its dump, as podwire does: nothing more goes out.
    drop(client);
    let got = reader.join().unwrap();
    // Whatever the server got, the dump counts as sent: a byte the peer has but the
    // destination thinks unsent makes the peer's ACKs look like ACKs of unsent data there,
    // and the connection stalls.
    let sent = written - dump.notsent as usize;
    assert!(
        got <= sent,
        "the server received {got} bytes, but the dump says only {sent} had been sent"
    );
}

#[test]
fn dumps_taken_while_data_arrives_match_the_stream() {
    let Some(mut helper) = own_helper("arrivals") else {
        return;
    };
    let (_listener, client, mut server) = loopback_pair();
    helper
        .channel
        .set(&[client.as_fd()], RepairCmd::On)
        .unwrap();
    // Nothing queued yet: the receive queue's head is the stream's first byte.
    let base = TcpDump::dump(client.as_fd()).unwrap().seq_rcv;
    // The sender writes a chunk each time a dump starts, so that data arrives while dumps
    // are taken.
    const DUMPS: usize = 1000;
    const CHUNK: usize = 1000;
    let (start, started) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let mut off = 0;
        while started.recv().is_ok() {
            let chunk: Vec<u8> = (off..off + CHUNK).map(pattern).collect();
            server.write_all(&chunk).unwrap();
            off += CHUNK;
        }
        server
    });
    // The client never reads: every dump's receive queue starts at the stream's first byte,
    // however much arrived while it was taken.
    for dumps in 0..DUMPS {
        start.send(()).unwrap();
        let dump = TcpDump::dump(client.as_fd()).unwrap();
        assert_eq!(dump.seq_rcv, base, "dump {dumps}: receive queue head moved");
        for (i, b) in dump.recv_queue.iter().enumerate() {
            assert_eq!(
                *b,
                pattern(i),
                "dump {dumps}: byte {i} of the receive queue"
            );
        }
    }
    drop(start);
    let _server = sender.join().unwrap();
}
