// Compiles proto/ with protox (pure Rust), so a fresh machine needs no system protoc.
fn main() {
    let proto_dir = "../../proto";
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile([format!("{proto_dir}/sluice.proto")], [proto_dir])
        .expect("compile proto/sluice.proto");
    tonic_prost_build::configure()
        // Shuffle pieces stay `Bytes`: a block is sliced into pieces and decoded without copies.
        .bytes(".sluice.v1.BlockPiece.data")
        .compile_fds(fds)
        .expect("generate gRPC code");
}
