//! Duration flags: plain seconds (`90`) or with units (`90s`, `5m`, `1h`, `1h30m`, `2d`).

/// Parses a duration into whole seconds.
pub fn parse_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let bad =
        || format!("{text:?} is not a duration; write seconds (90) or e.g. 90s, 5m, 1h30m, 2d");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_secs;

    #[test]
    fn seconds_and_units() {
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("30s"), Ok(30));
        assert_eq!(parse_secs("5m"), Ok(300));
        assert_eq!(parse_secs("1h30m"), Ok(5400));
        assert_eq!(parse_secs("2d"), Ok(172_800));
        for bad in ["", "m", "5x", "1h3", "-1", "1.5h"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }
}
