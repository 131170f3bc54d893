//! Running as a well-mannered Unix daemon (docs/design.md, "Service integration"): detaching, the pid file, dropping
//! privileges and talking to systemd.

pub mod detach;
pub mod notify;
pub mod pidfile;
pub mod privileges;
