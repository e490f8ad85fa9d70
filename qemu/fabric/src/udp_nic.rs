//! Host-side stand-ins for VMs: a NIC on a UDP socket, and a two-NIC box that passes every
//! frame straight across (the fabric's ceiling, and tests of the UDP path).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::fabric::{MAX_FRAME_LENGTH, MIN_FRAME_LENGTH, VmPort};
use crate::socket::VmSocket;
use crate::{Error, Result, socket};

/// Receive timeout of the loopback appliance's threads: how long a stop may take.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Socket buffers of the stand-ins, like the fabric's.
const BUFFER_BYTES: usize = 4 << 20;

/// The VM side of a [`VmPort`], played by the host: binds the VM's address and talks to the
/// fabric's, as QEMU's `-netdev dgram` does.
#[derive(Debug)]
pub struct UdpNic {
    socket: UdpSocket,
    fabric_addr: SocketAddr,
}

impl UdpNic {
    /// Binds `port.vm_addr`.
    pub fn bind(port: &VmPort) -> Result<UdpNic> {
        let socket = socket::bind_loopback(port.vm_addr.port(), BUFFER_BYTES, POLL_INTERVAL)?;
        Ok(UdpNic {
            socket,
            fabric_addr: port.fabric_addr,
        })
    }

    /// A NIC on the VM side socket the fabric opened
    /// ([`crate::Fabric::add_vm_port_with_socket`]).
    pub fn from_vm_socket(socket: VmSocket, port: &VmPort) -> Result<UdpNic> {
        let socket = socket.into_socket();
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        Ok(UdpNic {
            socket,
            fabric_addr: port.fabric_addr,
        })
    }

    /// Sends one frame to the fabric (14 to 65,507 bytes: never an empty datagram).
    pub fn send(&self, frame: &[u8]) -> Result {
        if !(MIN_FRAME_LENGTH..=MAX_FRAME_LENGTH).contains(&frame.len()) {
            return Err(Error::FrameLength(frame.len()));
        }
        self.socket.send_to(frame, self.fabric_addr)?;
        Ok(())
    }

    /// Receives one frame into `buffer`, waiting up to `timeout` (not zero); `None` when
    /// none came.
    pub fn recv(&self, buffer: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        match self.socket.recv_from(buffer) {
            Ok((length, _)) => Ok(Some(length)),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The address this NIC is bound to (the VM's address).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

/// A box with two NICs that sends every frame received on one out of the other, like a
/// bridge without a CPU budget. It stands in for the appliance VM when measuring what the
/// fabric alone can carry: the path keeps both UDP hops and every fabric-side cost.
pub struct LoopbackAppliance {
    stop: Arc<AtomicBool>,
    forwarded: [Arc<AtomicU64>; 2],
    threads: Vec<JoinHandle<()>>,
}

impl LoopbackAppliance {
    /// Binds the VM side of `lan` and `wan` and starts one thread per direction.
    pub fn start(lan: &VmPort, wan: &VmPort) -> Result<LoopbackAppliance> {
        let lan = UdpNic::bind(lan)?;
        let wan = UdpNic::bind(wan)?;
        let lan_clone = UdpNic {
            socket: lan.socket.try_clone()?,
            fabric_addr: lan.fabric_addr,
        };
        let wan_clone = UdpNic {
            socket: wan.socket.try_clone()?,
            fabric_addr: wan.fabric_addr,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let mut appliance = LoopbackAppliance {
            stop,
            forwarded,
            threads: Vec::new(),
        };
        for (index, (from, to)) in [(lan, wan_clone), (wan, lan_clone)].into_iter().enumerate() {
            let stop = Arc::clone(&appliance.stop);
            let counter = Arc::clone(&appliance.forwarded[index]);
            let thread = thread::Builder::new()
                .name(format!("loopback-{index}"))
                .spawn(move || pass_across(&from, &to, &stop, &counter))?;
            appliance.threads.push(thread);
        }
        Ok(appliance)
    }

    /// Frames passed LAN to WAN and WAN to LAN.
    pub fn forwarded(&self) -> (u64, u64) {
        (
            self.forwarded[0].load(Ordering::Relaxed),
            self.forwarded[1].load(Ordering::Relaxed),
        )
    }
}

fn pass_across(from: &UdpNic, to: &UdpNic, stop: &AtomicBool, counter: &AtomicU64) {
    let mut buffer = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let length = match from.socket.recv_from(&mut buffer) {
            Ok((length, _)) => length,
            Err(_) => continue,
        };
        if length >= MIN_FRAME_LENGTH
            && to.socket.send_to(&buffer[..length], to.fabric_addr).is_ok()
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LoopbackAppliance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
