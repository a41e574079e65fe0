//! Generates the gRPC server and client code for KubeVirt's hook API from `proto/` (protoc comes
//! from Debian's `protobuf-compiler`; scripts/install-deps.sh installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/info.proto",
        "proto/v1alpha2.proto",
        "proto/v1alpha3.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
