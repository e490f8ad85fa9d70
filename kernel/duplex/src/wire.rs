//! The heartbeat frame (SPEC §1): a zero-copy [`Packet`] view over a full Ethernet frame and
//! a validated [`HeartbeatRepr`], in smoltcp's style.

use core::fmt;

use duplex_hal::MacAddress;

use crate::config::NodeId;
use crate::state::{Mode, State};
use crate::{Error, Result};

/// The heartbeat EtherType: IEEE 802 Local Experimental EtherType 1 (SPEC §1).
pub const ETHERTYPE: u16 = 0x88B5;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length of the heartbeat payload.
pub const PAYLOAD_LEN: usize = 64;
/// Length of a whole heartbeat frame (no FCS).
pub const FRAME_LEN: usize = HEADER_LEN + PAYLOAD_LEN;
/// Length of the truncated MAC tag.
pub const TAG_LEN: usize = 16;

/// Field offsets within the whole frame.
mod field {
    use core::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
    pub const VERSION: usize = PAYLOAD;
    pub const MODE: usize = PAYLOAD + 1;
    pub const GROUP: Range<usize> = PAYLOAD + 2..PAYLOAD + 4;
    pub const NODE: Range<usize> = PAYLOAD + 4..PAYLOAD + 6;
    pub const PRIORITY: usize = PAYLOAD + 6;
    pub const STATE: usize = PAYLOAD + 7;
    pub const FLAGS: Range<usize> = PAYLOAD + 8..PAYLOAD + 10;
    pub const PATH: usize = PAYLOAD + 10;
    pub const TRAFFIC: usize = PAYLOAD + 11;
    pub const EPOCH: Range<usize> = PAYLOAD + 12..PAYLOAD + 16;
    pub const SEQUENCE: Range<usize> = PAYLOAD + 16..PAYLOAD + 24;
    pub const MASTER: Range<usize> = PAYLOAD + 24..PAYLOAD + 26;
    pub const RESERVED: Range<usize> = PAYLOAD + 26..PAYLOAD + 28;
    pub const MASTER_EPOCH: Range<usize> = PAYLOAD + 28..PAYLOAD + 32;
    pub const INTERVAL: Range<usize> = PAYLOAD + 32..PAYLOAD + 36;
    pub const LOAD: Range<usize> = PAYLOAD + 36..PAYLOAD + 40;
    pub const LOG_POSITION: Range<usize> = PAYLOAD + 40..PAYLOAD + 48;
    /// The bytes the tag covers.
    pub const AUTHENTICATED: Range<usize> = PAYLOAD..PAYLOAD + 48;
    pub const TAG: Range<usize> = PAYLOAD + 48..PAYLOAD + 64;
}

/// The group multicast address `03:44:50:58:GG:GG` (SPEC §1).
pub const fn group_address(group: u16) -> MacAddress {
    let g = group.to_be_bytes();
    MacAddress([0x03, 0x44, 0x50, 0x58, g[0], g[1]])
}

/// True when `frame` (a full Ethernet frame) carries the heartbeat EtherType: a cheap test
/// for the image's receive demultiplexer.
pub fn is_heartbeat(frame: &[u8]) -> bool {
    frame.len() >= HEADER_LEN && frame[field::ETHERTYPE] == ETHERTYPE.to_be_bytes()
}

/// The group's 256-bit heartbeat key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// A key from its bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Key(bytes)
    }

    /// A key derived from an operator secret with BLAKE3's key derivation (SPEC §1).
    pub fn derive(secret: &[u8]) -> Self {
        Key(blake3::derive_key(
            "duplex-core 2025 heartbeat key v1",
            secret,
        ))
    }

    /// The tag of `data`: BLAKE3 keyed hash truncated to 16 bytes.
    pub fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let hash = blake3::keyed_hash(&self.0, data);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }

    /// True when `tag` is the tag of `data`; constant time in the tag's contents.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let expected = self.tag(data);
        if tag.len() != TAG_LEN {
            return false;
        }
        let mut difference = 0u8;
        for (a, b) in expected.iter().zip(tag) {
            difference |= a ^ b;
        }
        difference == 0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Heartbeat flags (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(pub u16);

impl Flags {
    /// The sender is probing: answer at once.
    pub const PROBE_REQUEST: Flags = Flags(1);
    /// This frame answers a probe.
    pub const PROBE_REPLY: Flags = Flags(2);
    /// The sending Master asks to be replaced (operator fail-over).
    pub const YIELD: Flags = Flags(4);
    /// Every flag this version defines.
    pub const KNOWN: Flags = Flags(7);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the bits of `other` set.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// A read/write view of a heartbeat frame in a buffer (full Ethernet frame).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

macro_rules! getter {
    ($(#[$doc:meta])* $name:ident, u8, $field:expr) => {
        $(#[$doc])*
        pub fn $name(&self) -> u8 {
            self.buffer.as_ref()[$field]
        }
    };
    ($(#[$doc:meta])* $name:ident, $ty:ty, $field:expr) => {
        $(#[$doc])*
        pub fn $name(&self) -> $ty {
            let mut bytes = [0u8; core::mem::size_of::<$ty>()];
            bytes.copy_from_slice(&self.buffer.as_ref()[$field]);
            <$ty>::from_be_bytes(bytes)
        }
    };
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, u8, $field:expr) => {
        $(#[$doc])*
        pub fn $name(&mut self, value: u8) {
            self.buffer.as_mut()[$field] = value;
        }
    };
    ($(#[$doc:meta])* $name:ident, $ty:ty, $field:expr) => {
        $(#[$doc])*
        pub fn $name(&mut self, value: $ty) {
            self.buffer.as_mut()[$field].copy_from_slice(&value.to_be_bytes());
        }
    };
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks; accessors panic on a short buffer. Use [`Packet::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view after checking the length and the EtherType.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        if packet.ethertype() != ETHERTYPE {
            return Err(Error::NotHeartbeat);
        }
        Ok(packet)
    }

    /// `Truncated` unless the buffer holds a whole frame (a longer buffer is fine).
    pub fn check_len(&self) -> Result {
        if self.buffer.as_ref().len() < FRAME_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC address.
    pub fn destination(&self) -> MacAddress {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        MacAddress(m)
    }

    /// Source MAC address.
    pub fn source(&self) -> MacAddress {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        MacAddress(m)
    }

    getter!(
        /// EtherType.
        ethertype, u16, field::ETHERTYPE
    );
    getter!(
        /// Protocol version.
        version, u8, field::VERSION
    );
    getter!(
        /// Mode byte.
        mode, u8, field::MODE
    );
    getter!(
        /// Group id.
        group, u16, field::GROUP
    );
    getter!(
        /// Sender's node id.
        node, u16, field::NODE
    );
    getter!(
        /// Sender's priority.
        priority, u8, field::PRIORITY
    );
    getter!(
        /// State byte.
        state, u8, field::STATE
    );
    getter!(
        /// Flag bits.
        flags, u16, field::FLAGS
    );
    getter!(
        /// Path index the frame was sent on.
        path, u8, field::PATH
    );
    getter!(
        /// Paths with recent data traffic, one bit each.
        traffic, u8, field::TRAFFIC
    );
    getter!(
        /// Highest epoch the sender knows.
        epoch, u32, field::EPOCH
    );
    getter!(
        /// `incarnation << 32 | counter`.
        sequence, u64, field::SEQUENCE
    );
    getter!(
        /// Node id of the Master the sender follows or is (0: none).
        master, u16, field::MASTER
    );
    getter!(
        /// Reserved, sent 0.
        reserved, u16, field::RESERVED
    );
    getter!(
        /// Epoch of that Master's claim.
        master_epoch, u32, field::MASTER_EPOCH
    );
    getter!(
        /// Sender's current send interval, microseconds.
        interval_us, u32, field::INTERVAL
    );
    getter!(
        /// Sender's load, kbit/s.
        load_kbps, u32, field::LOAD
    );
    getter!(
        /// Sender's replicated-log position.
        log_position, u64, field::LOG_POSITION
    );

    /// The tag bytes.
    pub fn tag(&self) -> &[u8] {
        &self.buffer.as_ref()[field::TAG]
    }

    /// Checks the tag against `key`.
    pub fn verify(&self, key: &Key) -> Result {
        let bytes = self.buffer.as_ref();
        if key.verify(&bytes[field::AUTHENTICATED], &bytes[field::TAG]) {
            Ok(())
        } else {
            Err(Error::BadMac)
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the destination MAC address.
    pub fn set_destination(&mut self, mac: MacAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }
    /// Sets the source MAC address.
    pub fn set_source(&mut self, mac: MacAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }
    setter!(
        /// Sets the EtherType.
        set_ethertype, u16, field::ETHERTYPE
    );
    setter!(
        /// Sets the version.
        set_version, u8, field::VERSION
    );
    setter!(
        /// Sets the mode byte.
        set_mode, u8, field::MODE
    );
    setter!(
        /// Sets the group.
        set_group, u16, field::GROUP
    );
    setter!(
        /// Sets the node id.
        set_node, u16, field::NODE
    );
    setter!(
        /// Sets the priority.
        set_priority, u8, field::PRIORITY
    );
    setter!(
        /// Sets the state byte.
        set_state, u8, field::STATE
    );
    setter!(
        /// Sets the flags.
        set_flags, u16, field::FLAGS
    );
    setter!(
        /// Sets the path index.
        set_path, u8, field::PATH
    );
    setter!(
        /// Sets the traffic bits.
        set_traffic, u8, field::TRAFFIC
    );
    setter!(
        /// Sets the epoch.
        set_epoch, u32, field::EPOCH
    );
    setter!(
        /// Sets the sequence.
        set_sequence, u64, field::SEQUENCE
    );
    setter!(
        /// Sets the master id.
        set_master, u16, field::MASTER
    );
    setter!(
        /// Sets the reserved field.
        set_reserved, u16, field::RESERVED
    );
    setter!(
        /// Sets the master epoch.
        set_master_epoch, u32, field::MASTER_EPOCH
    );
    setter!(
        /// Sets the interval.
        set_interval_us, u32, field::INTERVAL
    );
    setter!(
        /// Sets the load.
        set_load_kbps, u32, field::LOAD
    );
    setter!(
        /// Sets the log position.
        set_log_position, u64, field::LOG_POSITION
    );

    /// Computes the tag over the authenticated bytes and writes it.
    pub fn fill_tag(&mut self, key: &Key) {
        let tag = key.tag(&self.buffer.as_ref()[field::AUTHENTICATED]);
        self.buffer.as_mut()[field::TAG].copy_from_slice(&tag);
    }
}

/// A decoded, authenticated, validated heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatRepr {
    /// Sender's MAC on that path (informational; not authenticated).
    pub source: MacAddress,
    /// Sender's mode.
    pub mode: Mode,
    /// Group id.
    pub group: u16,
    /// Sender.
    pub node: NodeId,
    /// Sender's priority.
    pub priority: u8,
    /// Sender's state.
    pub state: State,
    /// Flags (unknown bits cleared).
    pub flags: Flags,
    /// Path index the frame was sent on.
    pub path: u8,
    /// Paths with recent data traffic at the sender.
    pub traffic: u8,
    /// Highest epoch the sender knows.
    pub epoch: u32,
    /// `incarnation << 32 | counter`.
    pub sequence: u64,
    /// The Master the sender follows or is.
    pub master: Option<NodeId>,
    /// Epoch of that Master's claim (0 without a Master).
    pub master_epoch: u32,
    /// Sender's send interval, microseconds.
    pub interval_us: u32,
    /// Sender's load, kbit/s.
    pub load_kbps: u32,
    /// Sender's replicated-log position.
    pub log_position: u64,
}

impl HeartbeatRepr {
    /// Length of the frame [`HeartbeatRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        FRAME_LEN
    }

    /// Decodes `packet`, checking version, tag and fields in the order of SPEC §1.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>, key: &Key) -> Result<HeartbeatRepr> {
        packet.check_len()?;
        if packet.ethertype() != ETHERTYPE {
            return Err(Error::NotHeartbeat);
        }
        if packet.version() != VERSION {
            return Err(Error::UnsupportedVersion(packet.version()));
        }
        packet.verify(key)?;
        let mode = Mode::from_wire(packet.mode()).ok_or(Error::Malformed("mode"))?;
        let node = NodeId(packet.node());
        if !node.is_valid() {
            return Err(Error::Malformed("node id"));
        }
        let state = State::from_wire(packet.state()).ok_or(Error::Malformed("state"))?;
        if !state.exists_in(mode) {
            return Err(Error::Malformed("state not in mode"));
        }
        let master = match packet.master() {
            0 => None,
            id if NodeId(id).is_valid() => Some(NodeId(id)),
            _ => return Err(Error::Malformed("master id")),
        };
        Ok(HeartbeatRepr {
            source: packet.source(),
            mode,
            group: packet.group(),
            node,
            priority: packet.priority(),
            state,
            flags: Flags(packet.flags() & Flags::KNOWN.0),
            path: packet.path(),
            traffic: packet.traffic(),
            epoch: packet.epoch(),
            sequence: packet.sequence(),
            master,
            master_epoch: packet.master_epoch(),
            interval_us: packet.interval_us(),
            load_kbps: packet.load_kbps(),
            log_position: packet.log_position(),
        })
    }

    /// Writes the whole frame, tag included, into `packet` (at least [`FRAME_LEN`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>, key: &Key) {
        packet.set_destination(group_address(self.group));
        packet.set_source(self.source);
        packet.set_ethertype(ETHERTYPE);
        packet.set_version(VERSION);
        packet.set_mode(self.mode.to_wire());
        packet.set_group(self.group);
        packet.set_node(self.node.0);
        packet.set_priority(self.priority);
        packet.set_state(self.state.to_wire());
        packet.set_flags(self.flags.0);
        packet.set_path(self.path);
        packet.set_traffic(self.traffic);
        packet.set_epoch(self.epoch);
        packet.set_sequence(self.sequence);
        packet.set_master(self.master.map_or(0, |m| m.0));
        packet.set_reserved(0);
        packet.set_master_epoch(self.master_epoch);
        packet.set_interval_us(self.interval_us);
        packet.set_load_kbps(self.load_kbps);
        packet.set_log_position(self.log_position);
        packet.fill_tag(key);
    }

    /// The frame as an owned buffer.
    pub fn to_frame(&self, key: &Key) -> FrameBytes {
        let mut frame = FrameBytes([0; FRAME_LEN]);
        self.emit(&mut Packet::new_unchecked(&mut frame.0[..]), key);
        frame
    }
}

/// One whole heartbeat frame, ready for `Nic::transmit`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FrameBytes(pub [u8; FRAME_LEN]);

impl FrameBytes {
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for FrameBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for FrameBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameBytes({} bytes)", FRAME_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn sample() -> HeartbeatRepr {
        HeartbeatRepr {
            source: MacAddress([2, 0, 0, 0, 0, 1]),
            mode: Mode::Parallel,
            group: 0x0102,
            node: NodeId(7),
            priority: 100,
            state: State::Master,
            flags: Flags::PROBE_REQUEST.with(Flags::YIELD),
            path: 1,
            traffic: 0b11,
            epoch: 9,
            sequence: (3 << 32) | 44,
            master: Some(NodeId(7)),
            master_epoch: 9,
            interval_us: 1000,
            load_kbps: 100_000,
            log_position: 0xDEAD_BEEF,
        }
    }

    fn key() -> Key {
        Key::derive(b"test secret")
    }

    #[test]
    fn round_trip_and_layout() {
        let repr = sample();
        let frame = repr.to_frame(&key());
        let bytes = frame.as_bytes();
        assert_eq!(bytes.len(), 78);
        assert_eq!(&bytes[0..6], &[0x03, 0x44, 0x50, 0x58, 0x01, 0x02]);
        assert_eq!(&bytes[12..14], &[0x88, 0xB5]);
        assert_eq!(bytes[14], 1);
        assert!(is_heartbeat(bytes));
        let packet = Packet::new_checked(bytes).unwrap();
        assert_eq!(packet.sequence(), (3 << 32) | 44);
        assert_eq!(HeartbeatRepr::parse(&packet, &key()), Ok(repr));
        // A longer buffer (NIC padding) still parses.
        let mut padded = bytes.to_vec();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(
            HeartbeatRepr::parse(&Packet::new_unchecked(&padded), &key()),
            Ok(repr)
        );
    }

    #[test]
    fn errors_in_spec_order() {
        let frame = sample().to_frame(&key());
        let bytes = frame.as_bytes();
        assert_eq!(
            Packet::new_checked(&bytes[..77]).err(),
            Some(Error::Truncated)
        );
        let mut b = bytes.to_vec();
        b[12] = 0x08;
        assert_eq!(Packet::new_checked(&b).err(), Some(Error::NotHeartbeat));
        let mut b = bytes.to_vec();
        b[14] = 2;
        let p = Packet::new_unchecked(&b);
        assert_eq!(
            HeartbeatRepr::parse(&p, &key()),
            Err(Error::UnsupportedVersion(2))
        );
        // Any bit flip in the authenticated part or the tag: BadMac.
        for i in 15..78 {
            let mut b = bytes.to_vec();
            b[i] ^= 0x10;
            let p = Packet::new_unchecked(&b);
            assert_eq!(
                HeartbeatRepr::parse(&p, &key()),
                Err(Error::BadMac),
                "byte {i}"
            );
        }
        // Wrong key.
        let p = Packet::new_unchecked(bytes);
        assert_eq!(
            HeartbeatRepr::parse(&p, &Key::derive(b"other")),
            Err(Error::BadMac)
        );
        // A bad field with a good tag: Malformed.
        let mut b = bytes.to_vec();
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_state(9);
        p.fill_tag(&key());
        assert!(matches!(
            HeartbeatRepr::parse(&Packet::new_unchecked(&b), &key()),
            Err(Error::Malformed(_))
        ));
        let mut repr = sample();
        repr.mode = Mode::Serial;
        repr.state = State::QuasiMaster;
        let f = repr.to_frame(&key());
        assert!(matches!(
            HeartbeatRepr::parse(&Packet::new_unchecked(f.as_bytes()), &key()),
            Err(Error::Malformed(_))
        ));
        let mut repr = sample();
        repr.node = NodeId(0);
        let f = repr.to_frame(&key());
        assert!(matches!(
            HeartbeatRepr::parse(&Packet::new_unchecked(f.as_bytes()), &key()),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn unknown_flags_are_ignored() {
        let mut b = sample().to_frame(&key()).0;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_flags(0xFFF0 | 1);
        p.fill_tag(&key());
        let repr = HeartbeatRepr::parse(&Packet::new_unchecked(&b[..]), &key()).unwrap();
        assert_eq!(repr.flags, Flags::PROBE_REQUEST);
    }

    #[test]
    fn decoding_garbage_never_panics() {
        // Deterministic pseudo-random buffers of every length around the frame size,
        // plus mutations of a valid frame.
        let mut x: u64 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = sample().to_frame(&key()).0;
        for round in 0..3000 {
            let len = (next() % 100) as usize;
            let mut buf: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut v = valid.to_vec();
                v.truncate(len.max(60));
                let i = (next() as usize) % v.len();
                v[i] = next() as u8;
                v
            };
            if round % 3 == 0 && buf.len() >= 14 {
                buf[12] = 0x88;
                buf[13] = 0xB5;
            }
            let _ = is_heartbeat(&buf);
            if let Ok(p) = Packet::new_checked(&buf[..]) {
                let _ = HeartbeatRepr::parse(&p, &key());
            }
            let _ = HeartbeatRepr::parse(&Packet::new_unchecked(&buf[..]), &key());
        }
        assert!(!is_heartbeat(&[0u8; 13]));
    }

    #[test]
    fn group_address_is_local_multicast() {
        let m = group_address(0xABCD);
        assert!(m.is_multicast());
        assert_eq!(m.0[0] & 2, 2);
        assert_eq!(m.0[4..], [0xAB, 0xCD]);
    }
}
