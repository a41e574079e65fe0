//! The sidecar's life: bind the hook socket, serve, end with podwire.
//!
//! The sidecar ends
//! - with status 0 after KubeVirt's `Shutdown` hook (podwire stopped first) or on SIGTERM/SIGINT
//!   (the pod is going away; podwire is stopped too);
//! - with status 1 when a podwire exits on its own: the VM's network is gone, and the pod
//!   should show it rather than keep a guest without a NIC backend;
//! - with status 1 when the hook socket cannot be bound or the gRPC server fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;

use crate::hook::{Callbacks, Hook, InfoService, Paths};
use crate::proto::{info, v1alpha2, v1alpha3};

pub struct Config {
    /// The hook socket (in the sidecar's view of the hooks directory).
    pub hook_socket: PathBuf,
    pub binding: String,
    pub paths: Paths,
    pub cluster_domain: String,
    pub podwire: PathBuf,
    pub ready_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot listen on {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("podwire {0}; the sidecar ends with it")]
    PodwireDied(String),
}

/// Serves until shutdown; `Ok` for an orderly end.
pub async fn run(config: Config) -> Result<(), SidecarError> {
    let caps = crate::options::Capabilities::probe(&config.podwire);
    tracing::info!(
        "podwire binary {} (--fqdn: {})",
        config.podwire.display(),
        caps.fqdn
    );
    let supervisor = Arc::new(crate::podwire::Supervisor::new(
        config.podwire.clone(),
        caps,
        config.ready_timeout,
    ));
    let shutdown = Arc::new(Notify::new());
    let hook = Arc::new(Hook {
        binding: config.binding.clone(),
        paths: config.paths.clone(),
        cluster_domain: config.cluster_domain.clone(),
        supervisor: supervisor.clone(),
        shutdown: shutdown.clone(),
    });

    // A socket file left by an earlier run of this container would make the bind fail.
    let _ = std::fs::remove_file(&config.hook_socket);
    let listener = UnixListener::bind(&config.hook_socket)
        .map_err(|e| SidecarError::Bind(config.hook_socket.clone(), e))?;
    tracing::info!(
        "serving KubeVirt hooks {:?} for binding {:?} on {}",
        crate::hook::VERSIONS,
        config.binding,
        config.hook_socket.display()
    );

    let mut term = signal(SignalKind::terminate()).map_err(SidecarError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(SidecarError::Signals)?;
    let mut exited = supervisor.exited();
    let stop = Arc::new(Notify::new());
    let stop_server = stop.clone();
    let server = tonic::transport::Server::builder()
        .add_service(info::info_server::InfoServer::new(InfoService))
        .add_service(v1alpha3::callbacks_server::CallbacksServer::new(Callbacks(
            hook.clone(),
        )))
        .add_service(v1alpha2::callbacks_server::CallbacksServer::new(Callbacks(
            hook,
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            stop_server.notified().await
        });
    let mut server = std::pin::pin!(server);

    let outcome = tokio::select! {
        r = &mut server => r.map_err(SidecarError::from),
        what = exited.wait_for(|e| e.is_some()) => {
            let what = what.ok().and_then(|w| w.clone()).unwrap_or_default();
            if supervisor.is_stopping() {
                Ok(())
            } else {
                Err(SidecarError::PodwireDied(what))
            }
        }
        _ = shutdown.notified() => Ok(()),
        _ = term.recv() => { tracing::info!("SIGTERM"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT"); Ok(()) }
    };
    // Let an in-flight reply (Shutdown's) reach virt-launcher, then stop serving.
    stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
    supervisor.stop(Duration::from_secs(5)).await;
    let _ = std::fs::remove_file(&config.hook_socket);
    outcome
}
