//! Quantities as people write them in files and flags: durations ("90s",
//! "2h") and amounts of memory ("16Gi", "512M"), or plain numbers.
//!
//! One reader for every file format that takes them (job manifests,
//! cluster descriptions) and the flags that do, so that "16Gi" means the
//! same everywhere and every value is checked the same way: finite, not
//! negative, within `u64` for bytes.

use serde::Deserialize;

/// A number, or a string with a unit ("90s", "2h", "16Gi").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Quantity {
    Number(f64),
    Text(String),
}

/// Seconds in `q` (units ms, s, m, h, d; a bare number is seconds).
/// `field` names the value in the error.
pub(crate) fn seconds(field: &str, q: &Quantity) -> Result<f64, String> {
    let value = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(t) => {
            let t = t.trim();
            let (number, scale) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
                None => (t, 1.0),
                Some((i, _)) => {
                    let scale = match &t[i..] {
                        "ms" => 1e-3,
                        "s" => 1.0,
                        "m" => 60.0,
                        "h" => 3600.0,
                        "d" => 86400.0,
                        unit => {
                            return Err(format!(
                                "{field}: unknown unit {} in {} (use ms, s, m, h or d)",
                                crate::bounds::shown(unit),
                                crate::bounds::shown(t)
                            ));
                        }
                    };
                    (&t[..i], scale)
                }
            };
            number
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{field}: {} is not a duration", crate::bounds::shown(t)))?
                * scale
        }
    };
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{field}: must be a duration >= 0"));
    }
    Ok(value)
}

/// Bytes in `q` (units Ki, Mi, Gi, Ti and k, M, G, T; a bare number is
/// bytes). `field` names the value in the error.
pub(crate) fn bytes(field: &str, q: &Quantity) -> Result<u64, String> {
    let value = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
            let scale: f64 = match &t[split..] {
                "" => 1.0,
                "k" | "K" => 1e3,
                "M" => 1e6,
                "G" => 1e9,
                "T" => 1e12,
                "Ki" => 1024.0,
                "Mi" => 1024.0 * 1024.0,
                "Gi" => 1024.0 * 1024.0 * 1024.0,
                "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                unit => {
                    return Err(format!(
                        "{field}: unknown unit {} in {} (use Ki, Mi, Gi, Ti, k, M, G or T)",
                        crate::bounds::shown(unit),
                        crate::bounds::shown(t)
                    ));
                }
            };
            t[..split]
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{field}: {} is not an amount of memory", crate::bounds::shown(t)))?
                * scale
        }
    };
    if !(value.is_finite() && value >= 0.0 && value < u64::MAX as f64) {
        return Err(format!("{field}: must be a number of bytes >= 0"));
    }
    Ok(value.round() as u64)
}

/// An amount of memory given as text ("16Gi", "512M", "1048576"), for flags.
pub fn memory_bytes(field: &str, text: &str) -> Result<u64, String> {
    bytes(field, &Quantity::Text(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_hostile_values() {
        let text = |t: &str| Quantity::Text(t.into());
        assert_eq!(seconds("d", &text("2h")), Ok(7200.0));
        assert_eq!(seconds("d", &text("1.5m")), Ok(90.0));
        assert_eq!(seconds("d", &Quantity::Number(3.0)), Ok(3.0));
        assert_eq!(bytes("m", &text("16Gi")), Ok(16 << 30));
        assert_eq!(bytes("m", &text("2k")), Ok(2000));
        for bad in ["NaN", "inf", "-1", "1e400", "1 parsec", "Gi"] {
            assert!(bytes("m", &text(bad)).is_err(), "{bad}");
            assert!(seconds("d", &text(bad)).is_err(), "{bad}");
        }
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
            assert!(bytes("m", &Quantity::Number(bad)).is_err(), "{bad}");
        }
        // A 10 MB value is refused, and never quoted whole.
        let huge = "9".repeat(10 << 20) + "Zi";
        let e = bytes("m", &text(&huge)).unwrap_err();
        assert!(e.len() < 400, "{} bytes of error", e.len());
    }
}
