//! Intel 8254x (e1000) NIC driver (to be written).
