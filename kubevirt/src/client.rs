//! A hook client, as virt-launcher is one: gRPC over the sidecar's UNIX socket. For tests and
//! for checking a sidecar by hand; the sidecar itself never calls it.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::v1alpha3;

/// A channel to the hook socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.into();
    // The URI is required by the API but unused: every connection dials the socket.
    Endpoint::from_static("http://kubevirt-hook.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// `OnDefineDomain` (v1alpha3) on the hook at `socket`, blocking: the rewritten domain, or the
/// hook's error.
pub fn on_define_domain(socket: &Path, domain_xml: &str, vmi_json: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let channel = connect(socket).await.map_err(|e| e.to_string())?;
        let mut client = v1alpha3::callbacks_client::CallbacksClient::new(channel);
        let reply = client
            .on_define_domain(v1alpha3::OnDefineDomainParams {
                domain_xml: domain_xml.as_bytes().to_vec(),
                vmi: vmi_json.as_bytes().to_vec(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        String::from_utf8(reply.domain_xml).map_err(|e| e.to_string())
    })
}
