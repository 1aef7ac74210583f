//! How a block of one series' readings is laid out in bytes: column by column, each column
//! turned into small numbers that repeat, then deflated.
//!
//! - Ids, sequence numbers, measured and received times: the first value, the first
//!   difference, then the differences of differences, zigzag varints. A device reporting on
//!   a steady interval gives a run of zeros, which deflate shrinks to almost nothing.
//! - Values: when every value in the block is a decimal of at most [`MAX_DECIMALS`] places
//!   (what sensors send: 21.5, 1043, 0.125), the integers `value × 10^places`, as
//!   differences; otherwise each value's bits XORed with the previous value's (Gorilla's
//!   idea: close values share sign, exponent and high mantissa bits, so the XOR starts with
//!   zero bytes). A value is taken as a decimal only if dividing its integer back gives the
//!   same bits, so decoding is exact for every finite value, `-0.0` included.
//!
//! Everything is wrapping integer arithmetic on bits, so any `i64` and any finite `f64`
//! round-trips exactly.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;

/// The layout written by [`encode`]; a block of another layout is refused, not guessed at.
const FORMAT: u8 = 1;
/// Decimal places tried for values, fewest first.
pub const MAX_DECIMALS: u8 = 6;
/// The value column holds XORed bits rather than decimals.
const XOR_VALUES: u8 = 0xff;
/// Integers a double holds exactly: a decimal's integer must lie within this.
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// One reading as a block holds it: its device and metric are the block's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SealedReading {
    pub id: i64,
    pub seq: i64,
    pub value: f64,
    pub measured_at_us: i64,
    pub received_at_us: i64,
}

/// Why a block's bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bytes of `readings`, in the order given.
pub fn encode(readings: &[SealedReading]) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(readings.len() * 8 + 16);
    raw.push(FORMAT);
    put_varint(&mut raw, readings.len() as u64);
    put_column(&mut raw, readings.iter().map(|r| r.id));
    put_column(&mut raw, readings.iter().map(|r| r.seq));
    put_column(&mut raw, readings.iter().map(|r| r.measured_at_us));
    put_column(&mut raw, readings.iter().map(|r| r.received_at_us));
    match decimal_places(readings) {
        Some(places) => {
            raw.push(places);
            let scale = 10f64.powi(i32::from(places));
            let mut previous = 0i64;
            for r in readings {
                let integer = (r.value * scale).round() as i64;
                put_varint(&mut raw, zigzag(integer.wrapping_sub(previous)));
                previous = integer;
            }
        }
        None => {
            raw.push(XOR_VALUES);
            let mut previous = 0u64;
            for r in readings {
                let bits = r.value.to_bits();
                raw.extend_from_slice(&(bits ^ previous).to_be_bytes());
                previous = bits;
            }
        }
    }
    let mut deflated = DeflateEncoder::new(Vec::new(), Compression::best());
    deflated.write_all(&raw)?;
    deflated.finish()
}

/// The readings of a block, which its row says holds `count`.
pub fn decode(data: &[u8], count: usize) -> Result<Vec<SealedReading>, DecodeError> {
    // No column takes more than 10 bytes a reading: a block that inflates past that is
    // damaged, and is not inflated further.
    let most = (count as u64).saturating_mul(50).saturating_add(64);
    let mut raw = Vec::new();
    DeflateDecoder::new(data)
        .take(most + 1)
        .read_to_end(&mut raw)
        .map_err(|err| DecodeError(format!("the block does not inflate: {err}")))?;
    if raw.len() as u64 > most {
        return Err(DecodeError("the block inflates past its size".into()));
    }
    let mut input = Input { raw: &raw, at: 0 };
    if input.byte()? != FORMAT {
        return Err(DecodeError("the block is of an unknown format".into()));
    }
    if input.varint()? != count as u64 {
        return Err(DecodeError(format!(
            "the block does not hold the {count} readings its row says"
        )));
    }
    let ids = input.column(count)?;
    let seqs = input.column(count)?;
    let measured = input.column(count)?;
    let received = input.column(count)?;
    let values = match input.byte()? {
        XOR_VALUES => {
            let mut previous = 0u64;
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                previous ^= input.u64_be()?;
                values.push(f64::from_bits(previous));
            }
            values
        }
        places if places <= MAX_DECIMALS => {
            let scale = 10f64.powi(i32::from(places));
            let mut previous = 0i64;
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                previous = previous.wrapping_add(unzigzag(input.varint()?));
                values.push(previous as f64 / scale);
            }
            values
        }
        _ => {
            return Err(DecodeError(
                "the block's values are of an unknown kind".into(),
            ));
        }
    };
    if input.at != raw.len() {
        return Err(DecodeError("the block has bytes past its readings".into()));
    }
    Ok((0..count)
        .map(|i| SealedReading {
            id: ids[i],
            seq: seqs[i],
            value: values[i],
            measured_at_us: measured[i],
            received_at_us: received[i],
        })
        .collect())
}

/// The fewest decimal places that write every value exactly, if at most [`MAX_DECIMALS`].
fn decimal_places(readings: &[SealedReading]) -> Option<u8> {
    (0..=MAX_DECIMALS).find(|&places| {
        let scale = 10f64.powi(i32::from(places));
        readings.iter().all(|r| {
            let integer = (r.value * scale).round();
            integer.abs() < EXACT_INTEGER
                && ((integer as i64) as f64 / scale).to_bits() == r.value.to_bits()
        })
    })
}

/// First value, first difference, then differences of differences.
fn put_column(out: &mut Vec<u8>, column: impl Iterator<Item = i64>) {
    let (mut previous, mut previous_delta) = (0i64, 0i64);
    for value in column {
        let delta = value.wrapping_sub(previous);
        put_varint(out, zigzag(delta.wrapping_sub(previous_delta)));
        (previous, previous_delta) = (value, delta);
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

struct Input<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let byte = *self
            .raw
            .get(self.at)
            .ok_or_else(|| DecodeError("the block ends early".into()))?;
        self.at += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError("the block holds a number too long".into()))
    }

    fn u64_be(&mut self) -> Result<u64, DecodeError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(
            self.raw
                .get(self.at..self.at + 8)
                .ok_or_else(|| DecodeError("the block ends early".into()))?,
        );
        self.at += 8;
        Ok(u64::from_be_bytes(bytes))
    }

    fn column(&mut self, count: usize) -> Result<Vec<i64>, DecodeError> {
        let (mut previous, mut previous_delta) = (0i64, 0i64);
        let mut column = Vec::with_capacity(count);
        for _ in 0..count {
            let delta = previous_delta.wrapping_add(unzigzag(self.varint()?));
            previous = previous.wrapping_add(delta);
            previous_delta = delta;
            column.push(previous);
        }
        Ok(column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: impl IntoIterator<Item = f64>) -> Vec<SealedReading> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                let i = i as i64;
                SealedReading {
                    id: 1000 + i * 97 + (i % 3),
                    seq: 5 + i,
                    value,
                    measured_at_us: 1_700_000_000_000_000 + i * 10_000_000 + (i % 2) * 1234,
                    received_at_us: 1_700_000_000_500_000 + i * 10_000_000,
                }
            })
            .collect()
    }

    fn round_trip(readings: &[SealedReading]) -> Vec<u8> {
        let data = encode(readings).unwrap();
        let back = decode(&data, readings.len()).expect("decodes");
        assert_eq!(back.len(), readings.len());
        for (a, b) in readings.iter().zip(&back) {
            assert_eq!(
                (a.id, a.seq, a.measured_at_us, a.received_at_us),
                (b.id, b.seq, b.measured_at_us, b.received_at_us)
            );
            assert_eq!(
                a.value.to_bits(),
                b.value.to_bits(),
                "{} came back {}",
                a.value,
                b.value
            );
        }
        data
    }

    #[test]
    fn decimals_integers_and_awkward_doubles_come_back_bit_for_bit() {
        round_trip(&series((0..500).map(|i| 20.0 + f64::from(i % 17) * 0.1)));
        round_trip(&series((0..500).map(f64::from)));
        round_trip(&series([
            -0.0,
            0.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            1.0 / 3.0,
            -273.15,
            1e300,
            0.1 + 0.2,
        ]));
        round_trip(&series([
            123_456.789_012,
            -0.000_001,
            9_007_199_254_740_991.0,
        ]));
        round_trip(&[]);
    }

    #[test]
    fn extreme_integers_round_trip() {
        let mut readings = series([1.0, 2.0, 3.0]);
        readings[0].id = i64::MIN;
        readings[1].id = i64::MAX;
        readings[2].seq = i64::MAX;
        readings[0].measured_at_us = i64::MIN;
        readings[1].received_at_us = -1;
        round_trip(&readings);
    }

    #[test]
    fn a_steady_sensor_takes_about_a_byte_a_reading() {
        // One reading every 10 s, temperature to a tenth of a degree wandering slowly.
        let readings = series((0..8192).map(|i| f64::from(200 + (i / 7) % 40) / 10.0));
        let data = round_trip(&readings);
        let per_reading = data.len() as f64 / readings.len() as f64;
        assert!(per_reading < 2.0, "{per_reading} bytes a reading");
    }

    #[test]
    fn damaged_blocks_are_refused_not_misread() {
        let readings = series((0..100).map(f64::from));
        let data = encode(&readings).unwrap();
        assert!(
            decode(&data, 99).is_err(),
            "a count the block does not hold"
        );
        assert!(decode(&data[..data.len() / 2], 100).is_err(), "a cut block");
        assert!(decode(b"not deflate at all", 100).is_err());
        let mut raw = vec![FORMAT];
        put_varint(&mut raw, 1);
        raw.extend([0u8; 4]);
        raw.push(MAX_DECIMALS + 1);
        raw.push(0);
        let mut deflated = DeflateEncoder::new(Vec::new(), Compression::fast());
        deflated.write_all(&raw).unwrap();
        let unknown_values = deflated.finish().unwrap();
        assert!(decode(&unknown_values, 1).is_err(), "an unknown value kind");
    }
}
