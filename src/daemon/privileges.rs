//! Dropping root after the listeners are bound: to the configured user and its groups.

use nix::unistd::{getuid, initgroups, setgid, setuid, User};
use std::ffi::CString;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    #[error("cannot switch to user {user:?}: {reason}; refusing to run as root")]
    Switch { user: String, reason: String },
}

/// Switches to `user` when running as root; returns whether a switch happened. As any other
/// user there is nothing to drop and this does nothing.
pub fn drop_to(user: &str) -> Result<bool, PrivilegeError> {
    if user.is_empty() || !getuid().is_root() {
        return Ok(false);
    }
    let switch = |reason: String| PrivilegeError::Switch {
        user: user.to_string(),
        reason,
    };
    let account = User::from_name(user)
        .map_err(|e| switch(e.to_string()))?
        .ok_or_else(|| PrivilegeError::UnknownUser(user.to_string()))?;
    let name = CString::new(user).map_err(|e| switch(e.to_string()))?;
    initgroups(&name, account.gid).map_err(|e| switch(format!("initgroups: {e}")))?;
    setgid(account.gid).map_err(|e| switch(format!("setgid: {e}")))?;
    setuid(account.uid).map_err(|e| switch(format!("setuid: {e}")))?;
    if getuid().is_root() || setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
        return Err(switch("root privileges could be regained".into()));
    }
    Ok(true)
}
