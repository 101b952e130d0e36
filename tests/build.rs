//! Generates the test gRPC service from `proto/echo.proto` (needs `protoc`, Debian's
//! `protobuf-compiler`, which `.ci/run` installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/echo.proto"], &["proto"])?;
    Ok(())
}
