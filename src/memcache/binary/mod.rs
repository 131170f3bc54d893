//! memcached's binary protocol (docs/design.md, "Client protocol"): a connection whose first
//! byte is 0x80 speaks it for its whole life. The parser is pure and fuzzed; the executor
//! maps each opcode onto the node operations the text protocol uses.

pub mod execute;
pub mod frame;
