//! An appliance VM whose NICs are ports of the lab's fabric.

use std::time::Duration;

use duplex_fabric::{Fabric, MacAddress, VmPort};

use crate::Result;
use crate::vm::{Vm, VmConfig};

/// The NIC model QEMU emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NicModel {
    /// virtio-net-pci (modern virtio over PCI).
    #[default]
    Virtio,
    /// e1000 (Intel 82540EM).
    E1000,
}

impl NicModel {
    /// QEMU's device name.
    pub fn qemu_device(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
        }
    }

    /// Parses `virtio` or `e1000`.
    pub fn parse(s: &str) -> Option<NicModel> {
        match s {
            "virtio" => Some(NicModel::Virtio),
            "e1000" => Some(NicModel::E1000),
            _ => None,
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio",
            NicModel::E1000 => "e1000",
        }
    }
}

/// The MAC address of node `node`'s NIC number `index` (locally administered:
/// 02:44:50:00:NODE:INDEX).
pub fn nic_mac(node: u8, index: u8) -> MacAddress {
    MacAddress([0x02, 0x44, 0x50, 0x00, node, index])
}

/// An appliance VM and its fabric ports, in NIC order (lan, wan, link).
pub struct Appliance {
    /// The VM.
    pub vm: Vm,
    /// Its NICs' fabric ports.
    pub ports: Vec<VmPort>,
}

impl Appliance {
    /// Adds one fabric port per NIC name (`"A.lan"`, ...), adds the NICs to `config`
    /// in that order (the image names them lan, wan, link by PCI order) and boots.
    pub fn launch(
        fabric: &Fabric,
        mut config: VmConfig,
        node: u8,
        nics: &[(&str, NicModel)],
    ) -> Result<Appliance> {
        let mut ports = Vec::new();
        for (index, (name, model)) in nics.iter().enumerate() {
            let port = fabric.add_vm_port(name, nic_mac(node, index as u8))?;
            let id = format!("n{index}");
            config
                .extra_args
                .extend(port.qemu_args(&id, model.qemu_device()));
            ports.push(port);
        }
        let vm = Vm::launch(&config)?;
        Ok(Appliance { vm, ports })
    }

    /// Like [`Appliance::launch`], but the fabric opens QEMU's side of each NIC's socket
    /// ([`Fabric::add_vm_port_with_socket`]: 4 MiB buffers on both sides, no port race)
    /// and QEMU inherits it as a descriptor (`-netdev dgram,local.type=fd`). Use it where
    /// throughput matters: QEMU's default 208 KiB receive buffer overflows on main-loop
    /// hiccups. Our copies of the descriptors are closed once QEMU has started, so each
    /// socket lives as long as QEMU.
    pub fn launch_with_sockets(
        fabric: &Fabric,
        mut config: VmConfig,
        node: u8,
        nics: &[(&str, NicModel)],
    ) -> Result<Appliance> {
        let mut ports = Vec::new();
        let mut sockets = Vec::new();
        for (index, (name, model)) in nics.iter().enumerate() {
            let (port, socket) =
                fabric.add_vm_port_with_socket(name, nic_mac(node, index as u8))?;
            let id = format!("n{index}");
            config.extra_args.extend([
                "-netdev".to_string(),
                socket.netdev_arg(&id),
                "-device".to_string(),
                port.device_arg(&id, model.qemu_device()),
            ]);
            ports.push(port);
            sockets.push(socket);
        }
        // Inheritable only now, just before the spawn: a child another thread starts in
        // between would keep a copy open (harmless, see `VmSocket`), so keep that window short.
        for socket in &sockets {
            socket.make_inheritable()?;
        }
        let vm = Vm::launch(&config);
        // QEMU holds its own copies now (or failed to start): close ours either way.
        drop(sockets);
        Ok(Appliance { vm: vm?, ports })
    }

    /// Waits until the appliance is ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<String> {
        self.vm.wait_ready(timeout)
    }
}
