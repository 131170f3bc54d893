//! memcached's binary protocol, from the client's side: packets to send and responses to
//! read, so tests speak it over a real socket without trusting kai's own encoder.

use super::Client;

pub const GET: u8 = 0x00;
pub const SET: u8 = 0x01;
pub const ADD: u8 = 0x02;
pub const REPLACE: u8 = 0x03;
pub const DELETE: u8 = 0x04;
pub const INCREMENT: u8 = 0x05;
pub const DECREMENT: u8 = 0x06;
pub const QUIT: u8 = 0x07;
pub const FLUSH: u8 = 0x08;
pub const GETQ: u8 = 0x09;
pub const NOOP: u8 = 0x0a;
pub const VERSION: u8 = 0x0b;
pub const GETK: u8 = 0x0c;
pub const GETKQ: u8 = 0x0d;
pub const APPEND: u8 = 0x0e;
pub const PREPEND: u8 = 0x0f;
pub const STAT: u8 = 0x10;
pub const SETQ: u8 = 0x11;
pub const ADDQ: u8 = 0x12;
pub const DELETEQ: u8 = 0x14;
pub const INCREMENTQ: u8 = 0x15;
pub const QUITQ: u8 = 0x17;
pub const FLUSHQ: u8 = 0x18;
pub const APPENDQ: u8 = 0x19;
pub const TOUCH: u8 = 0x1c;
pub const GAT: u8 = 0x1d;
pub const GATQ: u8 = 0x1e;
pub const SASL_LIST: u8 = 0x20;
pub const SASL_AUTH: u8 = 0x21;
pub const GATK: u8 = 0x23;
pub const GATKQ: u8 = 0x24;

/// A request packet.
pub fn packet(
    opcode: u8,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
    cas: u64,
    opaque: u32,
) -> Vec<u8> {
    let body = (extras.len() + key.len() + value.len()) as u32;
    let mut out = vec![0x80, opcode];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    out.extend_from_slice(&body.to_be_bytes());
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

pub fn set_extras(flags: u32, exptime: u32) -> Vec<u8> {
    [flags.to_be_bytes(), exptime.to_be_bytes()].concat()
}

pub fn arith_extras(delta: u64, initial: u64, exptime: u32) -> Vec<u8> {
    let mut out = delta.to_be_bytes().to_vec();
    out.extend_from_slice(&initial.to_be_bytes());
    out.extend_from_slice(&exptime.to_be_bytes());
    out
}

/// One response packet, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub magic: u8,
    pub opcode: u8,
    pub status: u16,
    pub opaque: u32,
    pub cas: u64,
    pub extras: Vec<u8>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Response {
    pub fn flags(&self) -> u32 {
        u32::from_be_bytes(self.extras[..4].try_into().unwrap())
    }

    pub fn number(&self) -> u64 {
        u64::from_be_bytes(self.value[..8].try_into().unwrap())
    }
}

/// Reads one response packet.
pub fn read(client: &mut Client) -> Response {
    let header = client.read_exact(24);
    let key_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let extras_len = usize::from(header[4]);
    let body_len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
    let body = client.read_exact(body_len);
    Response {
        magic: header[0],
        opcode: header[1],
        status: u16::from_be_bytes([header[6], header[7]]),
        opaque: u32::from_be_bytes(header[12..16].try_into().unwrap()),
        cas: u64::from_be_bytes(header[16..24].try_into().unwrap()),
        extras: body[..extras_len].to_vec(),
        key: body[extras_len..extras_len + key_len].to_vec(),
        value: body[extras_len + key_len..].to_vec(),
    }
}

/// Sends `request` and reads responses up to and including the response to a Noop sent
/// after it (quiet commands answer nothing, so the Noop marks the end).
pub fn exchange(client: &mut Client, request: &[u8]) -> Vec<Response> {
    let mut bytes = request.to_vec();
    bytes.extend(packet(NOOP, &[], b"", b"", 0, 0x5e47_1e1e));
    client.send(&bytes);
    let mut responses = Vec::new();
    loop {
        let response = read(client);
        let end = response.opcode == NOOP && response.opaque == 0x5e47_1e1e;
        responses.push(response);
        if end {
            return responses;
        }
    }
}

/// SASL PLAIN login; returns the status.
pub fn login(client: &mut Client, user: &str, password: &str) -> u16 {
    let message = format!("\0{user}\0{password}");
    client.send(&packet(SASL_AUTH, &[], b"PLAIN", message.as_bytes(), 0, 1));
    read(client).status
}
