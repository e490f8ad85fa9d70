//! PCI configuration space (to be written).
