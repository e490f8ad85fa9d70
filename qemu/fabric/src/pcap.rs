//! Classic libpcap files (the format tcpdump and Wireshark read), link type 1 (Ethernet).
//!
//! Layout, all fields little-endian (the magic tells readers the byte order):
//!
//! | offset | size | global header field |
//! | --- | --- | --- |
//! | 0 | 4 | magic 0xa1b2c3d4 (microsecond timestamps) |
//! | 4 | 2 | major version 2 |
//! | 6 | 2 | minor version 4 |
//! | 8 | 4 | time zone offset, 0 |
//! | 12 | 4 | timestamp accuracy, 0 |
//! | 16 | 4 | snapshot length |
//! | 20 | 4 | link type, 1 = Ethernet |
//!
//! Each record: seconds (4), microseconds (4), captured length (4), original length (4),
//! then the captured bytes. Frames carry no FCS.

use std::io::{self, Write};

/// Magic number of a microsecond-resolution pcap file.
pub const MAGIC: u32 = 0xa1b2_c3d4;
/// Link type of Ethernet frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Snapshot length written in the header: frames longer than this are cut.
pub const SNAPSHOT_LENGTH: u32 = 65_535;
/// Bytes in the global header.
pub const GLOBAL_HEADER_LENGTH: usize = 24;
/// Bytes in a record header.
pub const RECORD_HEADER_LENGTH: usize = 16;

/// Writes a pcap stream to `W`.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    output: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header and returns the writer.
    pub fn new(mut output: W) -> io::Result<Self> {
        let mut header = [0u8; GLOBAL_HEADER_LENGTH];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        header[16..20].copy_from_slice(&SNAPSHOT_LENGTH.to_le_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        output.write_all(&header)?;
        Ok(PcapWriter { output })
    }

    /// Appends one frame seen at `unix_ns` nanoseconds since the Unix epoch.
    pub fn write_frame(&mut self, unix_ns: u64, frame: &[u8]) -> io::Result<()> {
        let original_length = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let captured_length = original_length.min(SNAPSHOT_LENGTH);
        // Seconds wrap in 2106, as in every classic pcap file.
        let seconds = (unix_ns / 1_000_000_000) as u32;
        let microseconds = ((unix_ns % 1_000_000_000) / 1_000) as u32;
        let mut header = [0u8; RECORD_HEADER_LENGTH];
        header[0..4].copy_from_slice(&seconds.to_le_bytes());
        header[4..8].copy_from_slice(&microseconds.to_le_bytes());
        header[8..12].copy_from_slice(&captured_length.to_le_bytes());
        header[12..16].copy_from_slice(&original_length.to_le_bytes());
        self.output.write_all(&header)?;
        self.output.write_all(&frame[..captured_length as usize])
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

/// One record read back from a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Seconds since the Unix epoch.
    pub seconds: u32,
    /// Microseconds within the second.
    pub microseconds: u32,
    /// Length of the frame on the wire.
    pub original_length: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// What is wrong with a pcap file that [`parse`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The file is shorter than the global header.
    ShortHeader,
    /// The magic is not a little-endian microsecond pcap magic.
    BadMagic(u32),
    /// The link type is not Ethernet.
    NotEthernet(u32),
    /// A record at this byte offset runs past the end of the file.
    TruncatedRecord(usize),
}

/// Reads a little-endian microsecond pcap file with link type Ethernet (what
/// [`PcapWriter`] writes). Never panics on bad input.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, ParseError> {
    let header = bytes
        .get(..GLOBAL_HEADER_LENGTH)
        .ok_or(ParseError::ShortHeader)?;
    let magic = read_u32(header, 0);
    if magic != MAGIC {
        return Err(ParseError::BadMagic(magic));
    }
    let link_type = read_u32(header, 20);
    if link_type != LINKTYPE_ETHERNET {
        return Err(ParseError::NotEthernet(link_type));
    }
    let mut records = Vec::new();
    let mut offset = GLOBAL_HEADER_LENGTH;
    while offset < bytes.len() {
        let truncated = ParseError::TruncatedRecord(offset);
        let data_start = offset.checked_add(RECORD_HEADER_LENGTH).ok_or(truncated)?;
        let record_header = bytes.get(offset..data_start).ok_or(truncated)?;
        let captured_length = read_u32(record_header, 8) as usize;
        let data_end = data_start.checked_add(captured_length).ok_or(truncated)?;
        let data = bytes.get(data_start..data_end).ok_or(truncated)?;
        records.push(Record {
            seconds: read_u32(record_header, 0),
            microseconds: read_u32(record_header, 4),
            original_length: read_u32(record_header, 12),
            data: data.to_vec(),
        });
        offset = data_end;
    }
    Ok(records)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse_round_trips() {
        let mut writer = PcapWriter::new(Vec::new()).unwrap();
        writer
            .write_frame(1_700_000_000_123_456_789, &[1; 60])
            .unwrap();
        writer
            .write_frame(1_700_000_001_000_000_000, &[2; 1514])
            .unwrap();
        let bytes = writer.output;
        assert_eq!(
            bytes.len(),
            GLOBAL_HEADER_LENGTH + 2 * RECORD_HEADER_LENGTH + 60 + 1514
        );
        let records = parse(&bytes).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].seconds, 1_700_000_000);
        assert_eq!(records[0].microseconds, 123_456);
        assert_eq!(records[0].data, vec![1; 60]);
        assert_eq!(records[1].original_length, 1514);
    }

    #[test]
    fn parse_refuses_bad_files_without_panicking() {
        assert_eq!(parse(&[0; 10]), Err(ParseError::ShortHeader));
        assert_eq!(parse(&[0; 24]), Err(ParseError::BadMagic(0)));
        let mut writer = PcapWriter::new(Vec::new()).unwrap();
        writer.write_frame(0, &[1; 60]).unwrap();
        let mut bytes = writer.output;
        bytes.truncate(bytes.len() - 1);
        assert_eq!(parse(&bytes), Err(ParseError::TruncatedRecord(24)));
        bytes[20] = 101;
        assert_eq!(parse(&bytes), Err(ParseError::NotEthernet(101)));
    }
}
