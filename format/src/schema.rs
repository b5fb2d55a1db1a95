//! Protobuf messages of every image type (generated from `format/proto/`).
