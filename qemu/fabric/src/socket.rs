//! UDP sockets on 127.0.0.1 with large kernel buffers.
//!
//! std has no setter for `SO_RCVBUF`/`SO_SNDBUF`; the default (208 KiB here) holds only
//! about 90 full-size frames, too few for the bursts a stopped-then-resumed VM or a
//! batching source produce. Linux caps the request at `net.core.rmem_max` /
//! `net.core.wmem_max` (4 MiB on the lab machines) and doubles it for bookkeeping.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

/// The QEMU side of a VM port, opened by the fabric: bound on 127.0.0.1 with large buffers
/// and connected to the fabric's socket. Handing it to QEMU by file descriptor avoids both
/// the race of picking a free port and QEMU's small default receive buffer (208 KiB: about
/// 90 full-size frames, which a QEMU main-loop hiccup overflows at 20,000 frames/s).
///
/// Use: [`VmSocket::make_inheritable`] just before spawning QEMU with
/// [`VmSocket::netdev_arg`], then drop the `VmSocket` (QEMU keeps its copy), so that the
/// socket closes when QEMU exits. A child that another thread spawns in between inherits
/// the descriptor too: harmless (it never reads it), but it keeps the socket open until
/// that child exits.
#[derive(Debug)]
pub struct VmSocket {
    socket: UdpSocket,
}

impl VmSocket {
    pub(crate) fn new(socket: UdpSocket) -> VmSocket {
        VmSocket { socket }
    }

    /// The socket, for a host-side stand-in of the VM (tests).
    pub fn into_socket(self) -> UdpSocket {
        self.socket
    }

    /// The descriptor number QEMU will see (the same in a child process).
    #[cfg(unix)]
    pub fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    /// `dgram,id=ID,local.type=fd,local.str=FD` for QEMU's `-netdev` (QEMU 7.2 and later).
    #[cfg(unix)]
    pub fn netdev_arg(&self, netdev_id: &str) -> String {
        format!(
            "dgram,id={netdev_id},local.type=fd,local.str={}",
            self.raw_fd()
        )
    }

    /// Lets child processes started from now on inherit the descriptor (clears
    /// `FD_CLOEXEC`; std opens every descriptor with it set).
    #[cfg(unix)]
    pub fn make_inheritable(&self) -> io::Result<()> {
        let descriptor = self.raw_fd();
        // SAFETY: `descriptor` belongs to `self.socket`, open for the whole call; F_GETFD
        // takes no argument and only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(descriptor, libc::F_GETFD) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; F_SETFD takes one `int` argument, the new flags, and changes
        // only whether the descriptor survives exec.
        if unsafe { libc::fcntl(descriptor, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

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

#[cfg(unix)]
fn set_buffer_sizes(socket: &UdpSocket, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    if bytes == 0 {
        return Ok(());
    }
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY:
        // 1. The descriptor belongs to `socket`, which outlives this call.
        // 2. `value` is an `int` living on the stack during the call, and the length passed
        //    is its size, as setsockopt(2) expects for SO_RCVBUF and SO_SNDBUF.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_buffer_sizes(_socket: &UdpSocket, _bytes: usize) -> io::Result<()> {
    Ok(())
}
