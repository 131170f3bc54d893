//! Nagios threshold ranges (the monitoring plugins guidelines): `10` alerts outside 0..10,
//! `10:` below 10, `~:10` above 10, `10:20` outside 10..20, `@10:20` inside 10..20.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    start: f64,
    end: f64,
    inside: bool,
}

impl Range {
    pub fn parse(text: &str) -> Result<Range, String> {
        let bad = || format!("invalid threshold range {text:?}");
        let (inside, body) = match text.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let number = |s: &str| s.parse::<f64>().map_err(|_| bad());
        let (start, end) = match body.split_once(':') {
            None => (0.0, number(body)?),
            Some((start, end)) => {
                let start = if start == "~" {
                    f64::NEG_INFINITY
                } else {
                    number(start)?
                };
                let end = if end.is_empty() {
                    f64::INFINITY
                } else {
                    number(end)?
                };
                (start, end)
            }
        };
        if start > end || body.is_empty() {
            return Err(bad());
        }
        Ok(Range { start, end, inside })
    }

    /// Whether `value` should raise the alert this range belongs to.
    pub fn alerts(&self, value: f64) -> bool {
        let within = value >= self.start && value <= self.end;
        within == self.inside
    }

    /// The range as perfdata writes it.
    pub fn text(&self) -> String {
        let bound = |v: f64| {
            if v.is_infinite() {
                String::new()
            } else {
                format!("{v}")
            }
        };
        let start = if self.start == f64::NEG_INFINITY {
            "~".to_string()
        } else {
            bound(self.start)
        };
        let prefix = if self.inside { "@" } else { "" };
        if self.start == 0.0 && !self.inside {
            bound(self.end)
        } else {
            format!("{prefix}{start}:{}", bound(self.end))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guideline_examples() {
        let r = |t| Range::parse(t).unwrap();
        assert!(r("10").alerts(11.0) && r("10").alerts(-1.0) && !r("10").alerts(10.0));
        assert!(r("10:").alerts(9.0) && !r("10:").alerts(1e9));
        assert!(r("~:10").alerts(11.0) && !r("~:10").alerts(-1e9));
        assert!(r("10:20").alerts(21.0) && !r("10:20").alerts(15.0));
        assert!(r("@10:20").alerts(15.0) && !r("@10:20").alerts(21.0));
        assert!(Range::parse("abc").is_err() && Range::parse("20:10").is_err());
        assert_eq!(r("10").text(), "10");
        assert_eq!(r("~:10").text(), "~:10");
        assert_eq!(r("@10:20").text(), "@10:20");
    }
}
