//! Generates the gRPC service code from `proto/` with a vendored `protoc`,
//! so the build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let proto = "../proto/wsched/v1/scheduler.proto";
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("wsched_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_protos(&[proto], &["../proto"])?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
