//! Seed sets: `"0-49999"`, `"0-9,20,30-39"` or a YAML list of integers.

use serde::{Deserialize, Deserializer};

/// The seeds of a sampling job, in the order given (each exactly once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

impl Seeds {
    /// Parse `a-b` ranges (inclusive) and single seeds separated by commas.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: u64 = a
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{part}`: `{a}` is not a seed"))?;
                    let b: u64 = b
                        .trim()
                        .parse()
                        .map_err(|_| format!("`{part}`: `{b}` is not a seed"))?;
                    if b < a {
                        return Err(format!("`{part}`: the range ends before it starts"));
                    }
                    if b - a >= 100_000_000 {
                        return Err(format!("`{part}`: more than 10^8 seeds"));
                    }
                    out.extend(a..=b);
                }
                None => out.push(
                    part.parse()
                        .map_err(|_| format!("`{part}` is not a seed"))?,
                ),
            }
        }
        Self::from_vec(out)
    }

    pub fn from_vec(v: Vec<u64>) -> Result<Self, String> {
        if v.is_empty() {
            return Err("no seeds given (e.g. seeds: 0-99)".into());
        }
        let mut sorted = v.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("seed {} is listed twice", w[0]));
        }
        Ok(Self(v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Seeds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u64),
            Text(String),
            List(Vec<u64>),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::One(s) => Seeds::from_vec(vec![s]),
            Raw::Text(t) => Seeds::parse(&t),
            Raw::List(v) => Seeds::from_vec(v),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists() {
        assert_eq!(
            Seeds::parse("0-3, 10,12-13").unwrap().0,
            vec![0, 1, 2, 3, 10, 12, 13]
        );
        assert!(Seeds::parse("5-3").is_err());
        assert!(Seeds::parse("1,1").is_err());
        assert!(Seeds::parse("x").is_err());
        let s: Seeds = serde_yaml::from_str("[3, 1, 2]").unwrap();
        assert_eq!(s.0, vec![3, 1, 2]);
        let s: Seeds = serde_yaml::from_str("\"0-49999\"").unwrap();
        assert_eq!(s.len(), 50_000);
    }
}
