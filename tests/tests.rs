//! modelcast's one integration-test binary. Each module is one area; helpers live in `lib.rs`.

mod codegen;
mod protocol;
mod protocol_props;
mod tidy;
