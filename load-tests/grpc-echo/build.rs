//! Generates the service from proto/echo.proto (needs `protoc`: Debian's `protobuf-compiler`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&["proto/echo.proto"], &["proto"])?;
    Ok(())
}
