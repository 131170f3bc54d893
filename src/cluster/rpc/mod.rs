//! Node-to-node RPC (DESIGN §6): length-prefixed postcard frames over TCP. Today: the frame
//! codec; the handshake, the client pool and the server come with the cluster core.

pub mod frame;
