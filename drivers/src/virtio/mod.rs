//! virtio devices over PCI (to be written).
