//! Fault injection: which simulated devices misbehave and how, so that tests can check
//! that one bad device never hurts the others. Parsed from the CLI syntax
//! `KIND=SELECTION[:PARAM]` (`dead=0.1`, `slow=3,7:300ms`, `flap=0.1:5s/5s`,
//! `mute=3:10s/5s`, ...).

use std::{fmt, str::FromStr, time::Duration};

use crate::duration::{parse_duration, DisplayDuration};
use crate::hostile::Hostile;
use crate::model;

/// What is wrong with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The device's port accepts TCP connections and closes them at once (with a reset),
    /// for the whole run; no OPC UA server runs for it.
    Dead,
    /// Every Read service response is delayed by this duration (an async sleep in the
    /// node manager; other devices are not affected).
    Slow(Duration),
    /// The device is reachable for `up`, then its listener closes and its existing
    /// connections are dropped for `down`, repeatedly.
    Flap {
        /// How long the device accepts connections in each cycle.
        up: Duration,
        /// How long the port is closed in each cycle.
        down: Duration,
    },
    /// Every third Read call of the device's tags (the 3rd, 6th, ...: read count `n` with
    /// `n % 3 == 2`, counted per device from 0) answers `BadCommunicationError` for every
    /// node of that call.
    BadStatus,
    /// Server-wide session limit of the device: further CreateSession calls are answered
    /// `BadTooManySessions` (async-opcua's own limit).
    MaxSessions(u32),
    /// The handshake and sessions work; every Read response is replaced on the
    /// wire by something broken or malicious (see [`Hostile`]).
    Hostile(Hostile),
    /// From `after` after the simulator started (once [`crate::Simulator::start`]
    /// returns), for `duration`, every Publish response is replaced on the wire by a
    /// ServiceFault `BadTimeout` (same request id and handle): subscriptions look alive
    /// (the session and Reads work) but deliver nothing, not even keep-alives. Security
    /// None only (the front rewrites plain chunks).
    Mute {
        /// When the window opens, after start.
        after: Duration,
        /// How long it lasts.
        duration: Duration,
    },
    /// The device keeps no history: every node of a HistoryRead answers
    /// `BadHistoryOperationUnsupported`, and its tags' AccessLevel lacks the HistoryRead
    /// bit (see [`crate::history`]).
    NoHistory,
}

impl Fault {
    /// The fault's name in the CLI syntax (`dead`, `slow`, `flap`, `bad-status`,
    /// `max-sessions`, `hostile`, `mute`, `no-history`).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Dead => "dead",
            Fault::Slow(_) => "slow",
            Fault::Flap { .. } => "flap",
            Fault::BadStatus => "bad-status",
            Fault::MaxSessions(_) => "max-sessions",
            Fault::Hostile(_) => "hostile",
            Fault::Mute { .. } => "mute",
            Fault::NoHistory => "no-history",
        }
    }
}

/// `dead`, `slow:300ms`, `flap:5s/5s`, `bad-status`, `max-sessions:1`,
/// `hostile:garbage`, `mute:10s/5s`, `no-history`.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Dead | Fault::BadStatus | Fault::NoHistory => f.write_str(self.kind()),
            Fault::Slow(d) => write!(f, "slow:{}", DisplayDuration(*d)),
            Fault::Flap { up, down } => {
                write!(
                    f,
                    "flap:{}/{}",
                    DisplayDuration(*up),
                    DisplayDuration(*down)
                )
            }
            Fault::MaxSessions(n) => write!(f, "max-sessions:{n}"),
            Fault::Hostile(h) => write!(f, "hostile:{h}"),
            Fault::Mute { after, duration } => write!(
                f,
                "mute:{}/{}",
                DisplayDuration(*after),
                DisplayDuration(*duration)
            ),
        }
    }
}

/// Which devices a fault applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// `round(f · N)` devices of the simulator (at least one when `f > 0`), taken from a
    /// deterministic shuffle of the device indexes; the faults of a configuration take
    /// consecutive blocks of that shuffle, so their devices are disjoint while the
    /// fractions add up to at most 1.
    Fraction(f64),
    /// These device indexes (indexes outside the simulator are ignored).
    Devices(Vec<u32>),
    /// Every device.
    All,
}

/// One fault and the devices it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// The fault.
    pub fault: Fault,
    /// The devices.
    pub select: Selection,
}

/// A `--fault` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fault `{spec}`: {reason}")]
pub struct FaultParseError {
    /// The text given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

const SYNTAX: &str = "expected KIND=SELECTION[:PARAM] with KIND one of dead, slow, flap, \
     bad-status, max-sessions, hostile, mute, no-history (e.g. dead=0.1, dead=3,7, \
     slow=0.1:3s, flap=0.1:5s/5s, bad-status=0.05, max-sessions=1, hostile=3:garbage, \
     mute=3:10s/5s, no-history=0.5)";

impl FromStr for FaultSpec {
    type Err = FaultParseError;

    /// Parse `KIND=SELECTION[:PARAM]`:
    ///
    /// * SELECTION is a fraction with a decimal point (`0.1`, `1.0`), `all`, or a device
    ///   list (`3,7` or `dev-00003,dev-00007`); a plain integer is a device index;
    /// * `dead`, `bad-status` and `no-history` take no PARAM; `slow` takes a delay (`300ms`, `3s`),
    ///   `flap` `UP/DOWN` (`5s/5s`), `max-sessions` a positive count, `hostile` a
    ///   kind (`garbage`, `huge-array`, `deep-nesting`, `huge-string`, `trickle`) and
    ///   `mute` `AFTER/FOR` (`10s/5s`, FOR positive); for
    ///   those a value without `:` is the PARAM alone and selects all devices
    ///   (`max-sessions=1`, `slow=300ms`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| FaultParseError {
            spec: s.to_string(),
            reason,
        };
        let (kind, rest) = s.split_once('=').ok_or_else(|| err(SYNTAX.to_string()))?;
        let kind = kind.trim().to_ascii_lowercase();
        let rest = rest.trim();
        let no_param = |select: &str| -> Result<Selection, FaultParseError> {
            if select.contains(':') {
                return Err(err(format!("{kind} takes no parameter, e.g. {kind}=0.1")));
            }
            parse_selection(select).map_err(err)
        };
        let with_param = || -> Result<(Selection, &str), FaultParseError> {
            match rest.rsplit_once(':') {
                Some((select, param)) => Ok((parse_selection(select).map_err(err)?, param)),
                None => Ok((Selection::All, rest)),
            }
        };
        let (fault, select) = match kind.as_str() {
            "dead" => (Fault::Dead, no_param(rest)?),
            "bad-status" => (Fault::BadStatus, no_param(rest)?),
            "no-history" => (Fault::NoHistory, no_param(rest)?),
            "slow" => {
                let (select, param) = with_param()?;
                let delay = parse_duration(param)
                    .map_err(|e| err(format!("slow needs a delay such as 0.1:3s: {e}")))?;
                (Fault::Slow(delay), select)
            }
            "flap" => {
                let (select, param) = with_param()?;
                let (up, down) = param.split_once('/').ok_or_else(|| {
                    err("flap needs UP/DOWN periods such as 0.1:5s/5s".to_string())
                })?;
                let up = parse_duration(up).map_err(|e| err(format!("flap up period: {e}")))?;
                let down =
                    parse_duration(down).map_err(|e| err(format!("flap down period: {e}")))?;
                if up.is_zero() || down.is_zero() {
                    return Err(err("flap periods must be positive".to_string()));
                }
                (Fault::Flap { up, down }, select)
            }
            "max-sessions" => {
                let (select, param) = with_param()?;
                let n: u32 = param.trim().parse().map_err(|_| {
                    err(format!(
                        "max-sessions needs a session count such as 1 or 0.1:1, not `{param}`"
                    ))
                })?;
                if n == 0 {
                    return Err(err("max-sessions must be at least 1".to_string()));
                }
                (Fault::MaxSessions(n), select)
            }
            "hostile" => {
                let (select, param) = with_param()?;
                (Fault::Hostile(param.parse().map_err(err)?), select)
            }
            "mute" => {
                let (select, param) = with_param()?;
                let (after, duration) = param
                    .split_once('/')
                    .ok_or_else(|| err("mute needs AFTER/FOR such as 3:10s/5s".to_string()))?;
                let after =
                    parse_duration(after).map_err(|e| err(format!("mute start (AFTER): {e}")))?;
                let duration = parse_duration(duration)
                    .map_err(|e| err(format!("mute duration (FOR): {e}")))?;
                if duration.is_zero() {
                    return Err(err("mute duration (FOR) must be positive".to_string()));
                }
                (Fault::Mute { after, duration }, select)
            }
            other => return Err(err(format!("unknown fault kind `{other}`; {SYNTAX}"))),
        };
        Ok(FaultSpec { fault, select })
    }
}

/// The CLI syntax, e.g. `slow=0.1:3s`, `dead=3,7`, `max-sessions=all:1`.
impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", self.fault.kind())?;
        match &self.select {
            Selection::All => f.write_str("all")?,
            Selection::Fraction(x) if x.fract() == 0.0 => write!(f, "{x:.1}")?,
            Selection::Fraction(x) => write!(f, "{x}")?,
            Selection::Devices(list) => {
                for (i, d) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}")?;
                }
            }
        }
        match self.fault {
            Fault::Dead | Fault::BadStatus | Fault::NoHistory => Ok(()),
            Fault::Slow(d) => write!(f, ":{}", DisplayDuration(d)),
            Fault::Flap { up, down } => {
                write!(f, ":{}/{}", DisplayDuration(up), DisplayDuration(down))
            }
            Fault::MaxSessions(n) => write!(f, ":{n}"),
            Fault::Hostile(h) => write!(f, ":{h}"),
            Fault::Mute { after, duration } => {
                write!(
                    f,
                    ":{}/{}",
                    DisplayDuration(after),
                    DisplayDuration(duration)
                )
            }
        }
    }
}

fn parse_selection(s: &str) -> Result<Selection, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok(Selection::All);
    }
    if s.contains('.') {
        let f: f64 = s
            .parse()
            .map_err(|_| format!("`{s}` is not a fraction such as 0.1"))?;
        if !(0.0..=1.0).contains(&f) {
            return Err(format!("fraction {s} is not between 0 and 1"));
        }
        return Ok(Selection::Fraction(f));
    }
    let mut list = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let index = if item.starts_with("dev-") {
            model::device_index(item)
        } else {
            item.parse().ok()
        };
        match index {
            Some(i) => list.push(i),
            None => {
                return Err(format!(
                    "`{item}` is neither a fraction with a decimal point (0.1, 1.0), `all`, \
                     nor a device (3 or dev-00003)"
                ))
            }
        }
    }
    Ok(Selection::Devices(list))
}

/// A fixed 64-bit mix (splitmix64), the deterministic shuffle key of a device index.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The faults of each device `first .. first + count` (in index order).
///
/// Fraction selections take consecutive blocks of the devices sorted by [`mix`] of their
/// index, in the order of `specs`, wrapping around once the fractions exceed 1. A device
/// gets each distinct fault at most once.
pub(crate) fn assign(specs: &[FaultSpec], first: u32, count: u32) -> Vec<Vec<Fault>> {
    let n = count as usize;
    let mut out: Vec<Vec<Fault>> = vec![Vec::new(); n];
    if n == 0 {
        return out;
    }
    let mut order: Vec<u32> = (0..count).collect();
    order.sort_by_key(|&pos| (mix(u64::from(first) + u64::from(pos)), pos));
    let mut cursor = 0usize;
    let add = |pos: usize, fault: Fault, out: &mut Vec<Vec<Fault>>| {
        if let Some(faults) = out.get_mut(pos) {
            if !faults.contains(&fault) {
                faults.push(fault);
            }
        }
    };
    for spec in specs {
        match &spec.select {
            Selection::All => (0..n).for_each(|pos| add(pos, spec.fault, &mut out)),
            Selection::Devices(list) => {
                for &index in list {
                    if let Some(pos) = index.checked_sub(first).filter(|p| *p < count) {
                        add(pos as usize, spec.fault, &mut out);
                    }
                }
            }
            Selection::Fraction(f) => {
                let mut k = (f * n as f64).round() as usize;
                if *f > 0.0 {
                    k = k.max(1);
                }
                for j in 0..k.min(n) {
                    add(order[(cursor + j) % n] as usize, spec.fault, &mut out);
                }
                cursor += k;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
