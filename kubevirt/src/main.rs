//! `podwire-kubevirt-sidecar`: podwire's KubeVirt network binding plugin (see the library).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use podwire_kubevirt::hook::Paths;
use podwire_kubevirt::sidecar::{self, Config};

/// KubeVirt mounts the sidecar's own subdirectory of the shared hooks volume here.
const HOOKS_DIR: &str = "/var/run/kubevirt-hooks";
/// podwire's sockets live in this subdirectory of the hooks directory: virt-launcher takes
/// every file directly in a sidecar's hooks directory for a hook socket, and skips directories.
const SOCKET_SUBDIR: &str = "podwire";

#[derive(Debug, Parser)]
#[command(
    name = "podwire-kubevirt-sidecar",
    version,
    about = "KubeVirt network binding plugin for podwire: serves KubeVirt's hook API, runs \
             podwire in the pod and points the VM's interface at it"
)]
struct Args {
    /// The hooks directory as this container sees it; the hook socket is created in it
    #[arg(long, value_name = "DIR", default_value = HOOKS_DIR)]
    hooks_dir: PathBuf,
    /// The hook socket's file name in the hooks directory
    #[arg(long, value_name = "NAME", default_value = "podwire.sock")]
    hook_socket: String,
    /// The same directory as virt-launcher's container sees it [default:
    /// /var/run/kubevirt-hooks/$CONTAINER_NAME when KubeVirt sets CONTAINER_NAME and --hooks-dir
    /// is the default, else --hooks-dir]
    #[arg(long, value_name = "DIR")]
    launcher_hooks_dir: Option<PathBuf>,
    /// The sidecar's container name (KubeVirt sets CONTAINER_NAME)
    #[arg(
        long,
        env = "CONTAINER_NAME",
        value_name = "NAME",
        hide_env_values = true
    )]
    container_name: Option<String>,
    /// The binding's name in the KubeVirt CR (KubeVirt sets NETWORK_BINDING_PLUGIN_NAME)
    #[arg(long, env = "NETWORK_BINDING_PLUGIN_NAME", default_value = "podwire")]
    binding: String,
    /// The podwire binary [default: `podwire` next to this binary, else on PATH]
    #[arg(long, value_name = "PATH")]
    podwire: Option<PathBuf>,
    /// Seconds OnDefineDomain waits for podwire's socket (virt-launcher gives the hook a minute)
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=55))]
    ready_timeout: u64,
    /// The cluster's DNS domain, for the guest's FQDN when the VMI has a subdomain
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Debug logging
    #[arg(short = 'd', long)]
    debug: bool,
}

/// KubeVirt mounts the sidecar's subdirectory `<container>` of the shared hooks volume at
/// HOOKS_DIR; virt-launcher sees the whole volume at HOOKS_DIR. With the hooks directory moved,
/// nothing can be guessed: the same path is assumed on both sides.
fn launcher_hooks_dir(args: &Args) -> PathBuf {
    if let Some(dir) = &args.launcher_hooks_dir {
        return dir.clone();
    }
    match args.container_name.as_deref().filter(|c| !c.is_empty()) {
        Some(container) if args.hooks_dir == Path::new(HOOKS_DIR) => {
            PathBuf::from(HOOKS_DIR).join(container)
        }
        _ => args.hooks_dir.clone(),
    }
}

fn default_podwire() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("podwire")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("podwire"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if args.debug {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    let launcher_hooks_dir = launcher_hooks_dir(&args);
    let config = Config {
        hook_socket: args.hooks_dir.join(&args.hook_socket),
        binding: args.binding.clone(),
        paths: Paths {
            sidecar_dir: args.hooks_dir.join(SOCKET_SUBDIR),
            launcher_dir: launcher_hooks_dir.join(SOCKET_SUBDIR),
        },
        cluster_domain: args.cluster_domain.clone(),
        podwire: args.podwire.clone().unwrap_or_else(default_podwire),
        ready_timeout: Duration::from_secs(args.ready_timeout),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podwire-kubevirt-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sidecar::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(argv: &[&str]) -> PathBuf {
        let args = Args::try_parse_from([&["sidecar"], argv].concat()).unwrap();
        launcher_hooks_dir(&args)
    }

    #[test]
    fn virt_launcher_sees_the_sidecar_directory_under_the_container_name() {
        assert_eq!(
            dir(&["--container-name", "hook-sidecar-1"]),
            Path::new("/var/run/kubevirt-hooks/hook-sidecar-1")
        );
        assert_eq!(
            dir(&["--container-name", "hook-sidecar-1", "--hooks-dir", "/x"]),
            Path::new("/x")
        );
        assert_eq!(
            dir(&["--container-name", "c", "--launcher-hooks-dir", "/y"]),
            Path::new("/y")
        );
    }
}
