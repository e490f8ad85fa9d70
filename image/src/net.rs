//! NICs as the appliance sees them: probed from PCI, named by slot order, watched for
//! link changes; and the management IP stack (smoltcp) that sits on the bridge.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use duplex_drivers::e1000::{self, Identification};
use duplex_drivers::pci::{self, PciAddress, PciFunction};
use duplex_drivers::virtio;
use duplex_hal::{Instant, MacAddress, Nic};
use duplex_mgmt::options::Ipv4Cidr;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

use crate::println;

/// Names of ports by probe order: the first NIC is the LAN side, the second the WAN
/// side, the third a dedicated heartbeat link.
pub const PORT_NAMES: [&str; 4] = ["lan", "wan", "link", "extra"];

/// One network port.
pub struct Port {
    /// "lan", "wan", "link".
    pub name: &'static str,
    /// Where the NIC sits.
    pub address: PciAddress,
    /// The driver.
    pub nic: Box<dyn Nic>,
    /// Link state as last seen.
    pub link_up: bool,
}

/// Probes every supported NIC among `functions`, in PCI order.
pub fn probe(config: &'static dyn pci::ConfigSpace, functions: &[PciFunction]) -> Vec<Port> {
    let mut ports = Vec::new();
    for f in functions {
        let nic: Box<dyn Nic> = match e1000::identify(f.vendor, f.device) {
            Identification::Supported(_) => {
                let Some((bar0, _)) = f.memory_bar(0) else {
                    println!("net: {} e1000 without a memory BAR, skipped", f.address);
                    continue;
                };
                f.enable(
                    config,
                    pci::command::MEMORY_SPACE | pci::command::BUS_MASTER,
                );
                // SAFETY: BAR0 of a supported e1000, assigned and inside the identity map;
                // this is the only driver instance for it.
                match unsafe { e1000::E1000::new_mmio(bar0) } {
                    Ok(nic) => Box::new(nic),
                    Err(e) => {
                        println!(
                            "{}net: {} e1000: {e}",
                            duplex_mgmt::markers::ERROR,
                            f.address
                        );
                        continue;
                    }
                }
            }
            Identification::Unsupported(reason) => {
                println!(
                    "net: {} {:04x}:{:04x} not supported: {reason}",
                    f.address, f.vendor, f.device
                );
                continue;
            }
            Identification::Unknown => {
                if virtio::identify_net(f.vendor, f.device).is_none() {
                    continue;
                }
                // SAFETY: a virtio-net function found by enumeration, BARs assigned below
                // 4 GiB; this is the only driver instance for it.
                match unsafe { virtio::VirtioNet::new_pci(config, f.address) } {
                    Ok(nic) => Box::new(nic),
                    Err(e) => {
                        println!(
                            "{}net: {} virtio-net: {e}",
                            duplex_mgmt::markers::ERROR,
                            f.address
                        );
                        continue;
                    }
                }
            }
        };
        let name = PORT_NAMES[ports.len().min(PORT_NAMES.len() - 1)];
        let mut port = Port {
            name,
            address: f.address,
            nic,
            link_up: false,
        };
        port.link_up = port.nic.link_up();
        println!(
            "net: {} {} {} mac {} link {}",
            port.name,
            port.address,
            port.nic.model(),
            port.nic.mac_address(),
            if port.link_up { "up" } else { "down" }
        );
        ports.push(port);
    }
    ports
}

/// `Failure::Hardware` codes for a link down on a bridged port that is not a path.
const LINK_FAILURE_BASE: u16 = 0x200;

/// Checks every port's link and reports changes on the console. A bridged port (lan,
/// wan) whose link goes down is a local interface failure of the Duplex node (a box that
/// lost a side cannot forward); it clears when the link comes back.
pub fn watch_links(ports: &mut [Port], mut duplex: Option<&mut crate::pair::Duplex>, now: Instant) {
    for (index, port) in ports.iter_mut().enumerate() {
        let up = port.nic.link_up();
        if up != port.link_up {
            port.link_up = up;
            println!("net: {} link {}", port.name, if up { "up" } else { "down" });
            if index < 2
                && let Some(duplex) = duplex.as_deref_mut()
            {
                // A bridged port that is not one of the node's paths (serial mode's outer
                // port when its traffic is not watched) is still a failure of this box.
                let failure = match duplex.path_of(index) {
                    Some(path) => duplex_core::Failure::Interface(path),
                    None => duplex_core::Failure::Hardware(LINK_FAILURE_BASE + index as u16),
                };
                if up {
                    duplex.node.on_recovery(failure, now);
                } else {
                    duplex.node.on_local_failure(failure, now);
                }
            }
        }
    }
}

/// Most frames the management stack queues each way before dropping.
const MANAGEMENT_QUEUE: usize = 64;

/// The management stack's side of the bridge: frames in and out, as queues.
#[derive(Default)]
pub struct ManagementDevice {
    /// Frames for the appliance itself, waiting for the stack.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames the stack sent, waiting for the bridge.
    pub tx: VecDeque<Vec<u8>>,
    /// Frames dropped because a queue was full.
    pub dropped: u64,
}

impl ManagementDevice {
    /// Queues a frame for the stack (dropped and counted when the queue is full).
    pub fn deliver(&mut self, frame: &[u8]) {
        if self.rx.len() >= MANAGEMENT_QUEUE {
            self.dropped += 1;
        } else {
            self.rx.push_back(frame.to_vec());
        }
    }
}

/// A received frame handed to smoltcp.
pub struct RxToken(Vec<u8>);
/// Room for one frame from smoltcp.
pub struct TxToken<'a>(&'a mut ManagementDevice);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = alloc::vec![0u8; len];
        let result = f(&mut frame);
        if self.0.tx.len() >= MANAGEMENT_QUEUE {
            self.0.dropped += 1;
        } else {
            self.0.tx.push_back(frame);
        }
        result
    }
}

impl phy::Device for ManagementDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The management IP stack: answers ARP and ping on its address.
pub struct Management {
    /// Its MAC address.
    pub mac: MacAddress,
    /// Its address.
    pub cidr: Ipv4Cidr,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// The frames in and out.
    pub device: ManagementDevice,
}

fn smoltcp_now(now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.as_micros() as i64)
}

impl Management {
    /// A stack with `mac` and `cidr`.
    pub fn new(mac: MacAddress, cidr: Ipv4Cidr, now: Instant) -> Management {
        let mut device = ManagementDevice::default();
        let mut config = Config::new(EthernetAddress(mac.0).into());
        config.random_seed = now.as_nanos();
        let mut iface = Interface::new(config, &mut device, smoltcp_now(now));
        let [a, b, c, d] = cidr.address;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                Ipv4Address::new(a, b, c, d).into(),
                cidr.prefix,
            ));
        });
        Management {
            mac,
            cidr,
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
        }
    }

    /// Lets the stack process queued frames; its answers land in `device.tx`.
    pub fn poll(&mut self, now: Instant) {
        self.iface
            .poll(smoltcp_now(now), &mut self.device, &mut self.sockets);
    }
}
