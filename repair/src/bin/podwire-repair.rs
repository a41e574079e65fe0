//! podwire-repair: the privileged half of TCP migration. Connects to podwire's repair
//! socket (PATH, usually the vhost-user socket path + `.repair`) and switches the TCP sockets
//! podwire sends it into or out of repair mode. Needs CAP_NET_ADMIN in the pod's network
//! namespace and nothing else; speaks the same protocol as passt-repair.

use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if args.len() != 2 {
        eprintln!("usage: podwire-repair PATH");
        return ExitCode::from(2);
    }
    let mut stream = match UnixStream::connect(&args[1]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("podwire-repair: connect {}: {e}", args[1].to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    match podwire_repair::serve_helper(&mut stream) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podwire-repair: {e}");
            ExitCode::FAILURE
        }
    }
}
