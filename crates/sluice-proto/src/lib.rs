//! Generated gRPC types and services of `proto/sluice.proto`.
#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("sluice.v1");
