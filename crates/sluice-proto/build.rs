// Compiles proto/ with protox (pure Rust), so a fresh machine needs no system protoc.
fn main() {
    let proto_dir = "../../proto";
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile([format!("{proto_dir}/sluice.proto")], [proto_dir])
        .expect("compile proto/sluice.proto");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generate gRPC code");
}
