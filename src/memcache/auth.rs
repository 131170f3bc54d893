//! Client authentication (docs/design.md, "Authentication"): the credentials file, SASL
//! PLAIN for binary clients and memcached's text-protocol login (a first `set` whose value
//! is "user password").
//!
//! The file holds one `user:password` per line (memcached's `-Y` format); `#` starts a
//! comment line. It must not be readable by group or others. SIGHUP re-reads it; a file that
//! no longer parses leaves the running credentials in place.

use crate::node::Node;
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The one SASL mechanism offered.
pub const MECHANISMS: &str = "PLAIN";
/// memcached's longest text login line and value.
const MAX_TEXT_LOGIN_LINE: usize = 2048;
const MAX_TEXT_LOGIN_VALUE: usize = 16384;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("memcache.auth_file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "memcache.auth_file {}: mode {mode:04o} lets group or others read the passwords; \
         chmod 600 it (owned by the user kai runs as)",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("memcache.auth_file {}, line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("memcache.auth_file {}: no credentials in the file", path.display())]
    Empty { path: PathBuf },
}

/// Users and a digest of each password (so a password is never compared byte by byte).
struct Credentials(HashMap<Vec<u8>, [u8; 16]>);

fn digest(password: &[u8]) -> [u8; 16] {
    Md5::digest(password).into()
}

impl Credentials {
    fn load(path: &Path) -> Result<Credentials, AuthError> {
        let unreadable = |source| AuthError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(AuthError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read(path).map_err(unreadable)?;
        let mut users = HashMap::new();
        let mut first_seen = HashMap::new();
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.trim_ascii().is_empty() || line.starts_with(b"#") {
                continue;
            }
            let bad = |reason: String| AuthError::Line {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(bad("expected user:password".into()));
            };
            let (user, password) = (&line[..colon], &line[colon + 1..]);
            if user.is_empty() || user.iter().any(|b| b.is_ascii_whitespace()) {
                return Err(bad("the user name is empty or contains a blank".into()));
            }
            if password.is_empty() {
                return Err(bad("the password is empty".into()));
            }
            if let Some(first) = first_seen.insert(user.to_vec(), index + 1) {
                return Err(bad(format!("user already defined on line {first}")));
            }
            users.insert(user.to_vec(), digest(password));
        }
        if users.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Credentials(users))
    }

    fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let offered = digest(password);
        // Hash the password even for an unknown user, so timing tells nothing either way.
        let expected = self.0.get(user).copied().unwrap_or([0; 16]);
        let differs = (offered.iter().zip(expected)).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        self.0.contains_key(user) && differs == 0
    }
}

/// The running credentials: `None` when `memcache.auth_file` is empty (authentication off).
pub struct Auth(RwLock<Option<Arc<Credentials>>>);

impl Auth {
    pub fn disabled() -> Auth {
        Auth(RwLock::new(None))
    }

    /// Reads `path` (empty: authentication off).
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let auth = Auth::disabled();
        auth.reload(path)?;
        Ok(auth)
    }

    /// Swaps in the credentials of `path`; on error the running ones stay.
    pub fn reload(&self, path: &Path) -> Result<(), AuthError> {
        let next = match path.as_os_str().is_empty() {
            true => None,
            false => Some(Arc::new(Credentials::load(path)?)),
        };
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Whether `user` and `password` match the file (always false when auth is off).
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let credentials = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        credentials.is_some_and(|c| c.check(user, password))
    }
}

/// Counts a login in `auth_cmds`/`auth_errors` (memcached's stats) and logs a refused one,
/// with the user name and never the password.
pub fn record_login(node: &Node, accepted: bool, user: &[u8], peer: SocketAddr) {
    let counters = node.counters();
    counters.auth_cmds.add(1);
    if !accepted {
        counters.auth_errors.add(1);
        log::warn!(
            "authentication failed for user {:?} from {peer}",
            String::from_utf8_lossy(user)
        );
    }
}

/// The user and password of a SASL PLAIN message (`authzid NUL user NUL password`, RFC
/// 4616). An authorization identity other than empty or the user itself is refused.
pub fn plain_credentials(message: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    (authzid.is_empty() || authzid == user).then_some((user, password))
}

/// What the front of an unauthenticated text connection holds.
#[derive(Debug, PartialEq, Eq)]
pub enum TextLogin<'a> {
    Incomplete {
        need: usize,
    },
    /// Junk without a line end: hang up, as memcached does.
    Close,
    /// Answer `reply`, drop `consumed` bytes, stay unauthenticated.
    Refuse {
        consumed: usize,
        reply: &'static str,
    },
    /// A login to check: `STORED` or `CLIENT_ERROR authentication failure`.
    Attempt {
        consumed: usize,
        user: &'a [u8],
        password: &'a [u8],
    },
}

/// memcached's text login: `set <any key> <any flags> <any exptime> <bytes>\r\n` followed by
/// `<user> <password>\r\n`. Any other command is refused without reading further.
pub fn text_login(buf: &[u8]) -> TextLogin<'_> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        return match buf.len() > MAX_TEXT_LOGIN_LINE {
            true => TextLogin::Close,
            false => TextLogin::Incomplete {
                need: buf.len() + 1,
            },
        };
    };
    let line_end = newline + 1;
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    let words: Vec<&[u8]> = (line.split(|&b| b == b' '))
        .filter(|w| !w.is_empty())
        .collect();
    let size = (words.len() >= 5 && words[0] == b"set")
        .then(|| std::str::from_utf8(words[4]).ok()?.parse::<u32>().ok())
        .flatten();
    let refuse = |consumed, reply| TextLogin::Refuse { consumed, reply };
    let Some(size) = size else {
        return refuse(line_end, "CLIENT_ERROR unauthenticated");
    };
    let size = size as usize;
    if size > MAX_TEXT_LOGIN_VALUE {
        return refuse(line_end, "CLIENT_ERROR auth token too long");
    }
    let total = line_end + size + 2;
    if buf.len() < total {
        return TextLogin::Incomplete { need: total };
    }
    let value = &buf[line_end..total];
    let Some(token) = value.strip_suffix(b"\r\n") else {
        return refuse(total, "CLIENT_ERROR bad command line termination");
    };
    let Some(space) = token.iter().position(|&b| b == b' ') else {
        return refuse(total, "CLIENT_ERROR bad authentication token format");
    };
    TextLogin::Attempt {
        consumed: total,
        user: &token[..space],
        password: &token[space + 1..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("auth");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn credentials_files_are_checked_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "# users\nalice:s3cr:et\n\nbob:pw\r\n", 0o600);
        let auth = Auth::load(&path).unwrap();
        assert!(auth.enabled());
        assert!(auth.check(b"alice", b"s3cr:et"));
        assert!(auth.check(b"bob", b"pw"));
        assert!(!auth.check(b"bob", b"pw2"));
        assert!(!auth.check(b"carol", b"pw"));
        let exposed = write(dir.path(), "a:b\n", 0o640);
        let error = Auth::load(&exposed).err().unwrap().to_string();
        assert!(error.contains("mode 0640"), "{error}");
        for (text, wanted) in [
            ("a:b\nnocolon\n", "line 2: expected user:password"),
            ("a:b\na:c\n", "line 2: user already defined on line 1"),
            (":pw\n", "line 1: the user name is empty"),
            ("a:\n", "line 1: the password is empty"),
            ("# nothing\n", "no credentials"),
        ] {
            let path = write(dir.path(), text, 0o600);
            let error = Auth::load(&path).err().unwrap().to_string();
            assert!(error.contains(wanted), "{text:?}: {error}");
        }
        // A failed reload keeps the running credentials; an empty path turns auth off.
        let bad = write(dir.path(), "junk\n", 0o600);
        assert!(auth.reload(&bad).is_err());
        assert!(auth.check(b"bob", b"pw"));
        auth.reload(Path::new("")).unwrap();
        assert!(!auth.enabled() && !auth.check(b"bob", b"pw"));
    }

    #[test]
    fn sasl_plain_messages() {
        assert_eq!(
            plain_credentials(b"\0user\0pass"),
            Some((&b"user"[..], &b"pass"[..]))
        );
        assert_eq!(
            plain_credentials(b"user\0user\0p\0w"),
            Some((&b"user"[..], &b"p\0w"[..]))
        );
        assert_eq!(plain_credentials(b"admin\0user\0pass"), None);
        assert_eq!(plain_credentials(b"user\0pass"), None);
    }

    #[test]
    fn text_logins_follow_memcached() {
        assert_eq!(
            text_login(b"set x 0 0 7\r\nbob pw!\r\nget"),
            TextLogin::Attempt {
                consumed: 22,
                user: b"bob",
                password: b"pw!"
            }
        );
        assert_eq!(
            text_login(b"set x 0 0 7\r\nbob"),
            TextLogin::Incomplete { need: 22 }
        );
        assert_eq!(
            text_login(b"get x\r\n"),
            TextLogin::Refuse {
                consumed: 7,
                reply: "CLIENT_ERROR unauthenticated"
            }
        );
        assert_eq!(
            text_login(b"set x 0 0 5\r\nbobpw\r\n"),
            TextLogin::Refuse {
                consumed: 20,
                reply: "CLIENT_ERROR bad authentication token format"
            }
        );
        assert_eq!(
            text_login(b"set x 0 0 2\r\nabcd"),
            TextLogin::Refuse {
                consumed: 17,
                reply: "CLIENT_ERROR bad command line termination"
            }
        );
        assert_eq!(text_login(&[b'x'; 3000]), TextLogin::Close);
    }
}
