//! Running as a well-mannered Unix daemon (DESIGN §8): detaching, the pid file, dropping
//! privileges and talking to systemd.

pub mod detach;
pub mod notify;
pub mod pidfile;
pub mod privileges;
