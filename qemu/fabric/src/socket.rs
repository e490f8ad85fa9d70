//! UDP sockets on 127.0.0.1 with large kernel buffers.
//!
//! std has no setter for `SO_RCVBUF`/`SO_SNDBUF`; the default (208 KiB here) holds only
//! about 90 full-size frames, too few for the bursts a stopped-then-resumed VM or a
//! batching source produce. Linux caps the request at `net.core.rmem_max` /
//! `net.core.wmem_max` (4 MiB on the lab machines) and doubles it for bookkeeping.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

/// Binds a UDP socket on 127.0.0.1 (`port` 0: any free port) with large buffers and a
/// read timeout, so that receiving threads notice a stop request.
pub(crate) fn bind_loopback(
    port: u16,
    buffer_bytes: usize,
    read_timeout: Duration,
) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
    set_buffer_sizes(&socket, buffer_bytes)?;
    socket.set_read_timeout(Some(read_timeout))?;
    Ok(socket)
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

#[cfg(target_os = "linux")]
fn set_buffer_sizes(socket: &UdpSocket, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    const SOL_SOCKET: i32 = 1;
    const SO_SNDBUF: i32 = 7;
    const SO_RCVBUF: i32 = 8;

    unsafe extern "C" {
        fn setsockopt(
            socket: i32,
            level: i32,
            name: i32,
            value: *const core::ffi::c_void,
            length: u32,
        ) -> i32;
    }

    if bytes == 0 {
        return Ok(());
    }
    let value = i32::try_from(bytes).unwrap_or(i32::MAX);
    for option in [SO_RCVBUF, SO_SNDBUF] {
        // SAFETY:
        // 1. The descriptor belongs to `socket`, which outlives this call.
        // 2. `value` is an `int` living on the stack during the call, and the length passed
        //    is its size, as setsockopt(2) expects for SO_RCVBUF and SO_SNDBUF.
        let result = unsafe {
            setsockopt(
                socket.as_raw_fd(),
                SOL_SOCKET,
                option,
                (&raw const value).cast(),
                size_of::<i32>() as u32,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_buffer_sizes(_socket: &UdpSocket, _bytes: usize) -> io::Result<()> {
    Ok(())
}
