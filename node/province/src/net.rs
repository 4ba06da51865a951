//! Free addresses on 127.0.0.1 for servers a test or benchmark starts.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// A free port on 127.0.0.1 (bound, then released for the server to take),
/// never the same one twice in this process, so that servers started at the
/// same time cannot be handed each other's ports. Fails if no socket can be
/// bound on 127.0.0.1.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return Ok(addr);
        }
    }
}
