//! Destination port ranges as users write them: `514` or `5000-5010`.

use std::{fmt, str::FromStr};

use thiserror::Error;

/// An inclusive range of UDP ports, 1..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortRangeError {
    #[error("`{0}` is not a port: use a number 1-65535, or a range such as 5000-5010")]
    NotANumber(String),
    #[error("port {0} is out of range: UDP ports are 1-65535 (0 is reserved)")]
    OutOfRange(u64),
    #[error("range `{0}` is backwards: write the lower port first")]
    Backwards(String),
}

fn port(s: &str, whole: &str) -> Result<u16, PortRangeError> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| PortRangeError::NotANumber(whole.to_string()))?;
    if n == 0 || n > 65535 {
        return Err(PortRangeError::OutOfRange(n));
    }
    Ok(n as u16)
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a, s)?, port(b, s)?),
            None => {
                let p = port(s, s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(PortRangeError::Backwards(s.to_string()));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Collapses sorted, possibly adjacent ports into ranges: 1,2,3,7 → 1-3,7.
pub fn compact(ports: impl IntoIterator<Item = u16>) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for p in ports {
        match out.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(p) => r.last = p,
            _ => out.push(PortRange::single(p)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        assert_eq!("514".parse(), Ok(PortRange::single(514)));
        assert_eq!(
            "5000-5010".parse(),
            Ok(PortRange {
                first: 5000,
                last: 5010
            })
        );
        assert_eq!("65535".parse(), Ok(PortRange::single(65535)));
        assert_eq!("1-65535".parse::<PortRange>().unwrap().len(), 65535);
    }

    #[test]
    fn refuses_bad_ports() {
        assert_eq!("0".parse::<PortRange>(), Err(PortRangeError::OutOfRange(0)));
        assert_eq!(
            "65536".parse::<PortRange>(),
            Err(PortRangeError::OutOfRange(65536))
        );
        assert_eq!(
            "10-5".parse::<PortRange>(),
            Err(PortRangeError::Backwards("10-5".into()))
        );
        assert!(matches!(
            "syslog".parse::<PortRange>(),
            Err(PortRangeError::NotANumber(_))
        ));
        assert!(matches!(
            "5-".parse::<PortRange>(),
            Err(PortRangeError::NotANumber(_))
        ));
        assert!(matches!(
            "-5".parse::<PortRange>(),
            Err(PortRangeError::NotANumber(_))
        ));
    }

    #[test]
    fn compacts_into_ranges() {
        let got: Vec<String> = compact([1, 2, 3, 7, 9, 10, 65535])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["1-3", "7", "9-10", "65535"]);
    }
}
