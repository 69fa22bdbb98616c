//! Generates the gRPC code with protox (a pure-Rust protobuf compiler), so building Kappie
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kappie.proto");
    println!("cargo:rerun-if-changed=proto/prometheus.proto");
    let fds = protox::compile(["kappie.proto", "prometheus.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
