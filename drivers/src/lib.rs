//! Drivers.
#![no_std]
