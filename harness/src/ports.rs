//! Free loopback ports.

/// A loopback port that was free a moment ago. Another process may take it before the
/// caller's child binds it: launchers that care start again on a fresh port.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
