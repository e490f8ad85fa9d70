//! The CMOS real-time clock, read once at boot (for the boot incarnation number).

use x86_64::instructions::port::Port;

fn read_register(register: u8) -> u8 {
    // SAFETY: 0x70 selects a CMOS register (bit 7 keeps NMIs enabled as they are on a
    // PC), 0x71 reads it; RTC registers 0x00-0x0B have no read side effects.
    unsafe {
        Port::<u8>::new(0x70).write(register);
        Port::<u8>::new(0x71).read()
    }
}

fn bcd(value: u8) -> u8 {
    (value & 0x0f) + (value >> 4) * 10
}

/// Days from 1970-01-01 to `year-month-day` (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since 1970 from the RTC (UTC as QEMU presents it), or `None` when the clock
/// reads as nonsense.
pub fn unix_seconds() -> Option<u64> {
    // Wait while an update is in progress, then read twice until two reads agree.
    let read = || {
        for _ in 0..100_000 {
            if read_register(0x0a) & 0x80 == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(read_register)
    };
    let mut values = read();
    for _ in 0..5 {
        let again = read();
        if again == values {
            break;
        }
        values = again;
    }
    let status_b = read_register(0x0b);
    let decode = |v: u8| if status_b & 0x04 == 0 { bcd(v) } else { v };
    let second = decode(values[0]);
    let minute = decode(values[1]);
    let hour_raw = values[2];
    let pm = hour_raw & 0x80 != 0;
    let mut hour = decode(hour_raw & 0x7f);
    if status_b & 0x02 == 0 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    let day = decode(values[3]);
    let month = decode(values[4]);
    let year = decode(values[5]);
    let century = match decode(values[6]) {
        c @ 19..=21 => c,
        _ => 20,
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let year = i64::from(century) * 100 + i64::from(year);
    let days = days_from_civil(year, i64::from(month), i64::from(day));
    let seconds =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    u64::try_from(seconds).ok()
}
