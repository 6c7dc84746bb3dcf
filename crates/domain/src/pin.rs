//! The PIN application of a device policy: PIN rules, checking a PIN rule by rule (for
//! a UI that shows each rule live), and generating a PIN that satisfies the rules.
//!
//! PINs never appear in messages: a rule failure says what the rule is, not the PIN.

use crate::error::{ValidationError, ValidationResult};
use crate::names::CharacterSet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinApplication {
    /// "Minimum PIN Length"
    pub min_length: u8,
    /// "Maximum PIN Length"
    pub max_length: u8,
    pub character_set: CharacterSet,
    /// Longest run of one repeated character allowed (2: "1123" ok, "1112" not).
    #[serde(default)]
    pub max_repeated: Option<u8>,
    /// Longest ascending or descending run allowed (3: "1235" ok, "1234" not).
    #[serde(default)]
    pub max_sequential: Option<u8>,
    /// How many previous PINs may not be reused (checked by whoever keeps PIN hashes).
    #[serde(default)]
    pub history_count: u8,
    /// PIN retry counter to set on the device; None keeps the device default.
    #[serde(default)]
    pub pin_retry_count: Option<u8>,
    /// PUK retry counter to set on the device; None keeps the device default.
    #[serde(default)]
    pub puk_retry_count: Option<u8>,
}

impl Default for PinApplication {
    /// SP 800-73-4 baseline: 6 to 8 digits.
    fn default() -> Self {
        Self {
            min_length: 6,
            max_length: 8,
            character_set: CharacterSet::Numeric,
            max_repeated: None,
            max_sequential: None,
            history_count: 0,
            pin_retry_count: None,
            puk_retry_count: None,
        }
    }
}

/// The PIN rules, each with a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinRule {
    MinLength,
    MaxLength,
    CharacterSet,
    MaxRepeated,
    MaxSequential,
}

impl PinRule {
    /// The error code when the rule fails.
    pub const fn code(self) -> &'static str {
        match self {
            PinRule::MinLength => "pin_too_short",
            PinRule::MaxLength => "pin_too_long",
            PinRule::CharacterSet => "pin_bad_characters",
            PinRule::MaxRepeated => "pin_repeated_run",
            PinRule::MaxSequential => "pin_sequential_run",
        }
    }
}

/// One rule's outcome for a candidate PIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRuleCheck {
    pub rule: PinRule,
    pub code: String,
    pub passed: bool,
    /// The rule in words ("at least 6 characters"); never contains the PIN.
    pub description: String,
}

impl CharacterSet {
    pub fn contains(self, c: char) -> bool {
        match self {
            CharacterSet::Numeric => c.is_ascii_digit(),
            CharacterSet::Alphanumeric => c.is_ascii_alphanumeric(),
            CharacterSet::Printable => c.is_ascii_graphic() || c == ' ',
        }
    }

    /// The characters a generated PIN draws from.
    pub fn alphabet(self) -> &'static [u8] {
        match self {
            CharacterSet::Numeric => b"0123456789",
            // Letters that are easy to read out and type; a person may pick any letter.
            CharacterSet::Alphanumeric | CharacterSet::Printable => {
                b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
            }
        }
    }
}

fn longest_run(pin: &[u8], step: impl Fn(u8, u8) -> bool) -> usize {
    let mut best = usize::from(!pin.is_empty());
    let mut cur = best;
    for w in pin.windows(2) {
        if step(w[0], w[1]) {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 1;
        }
    }
    best
}

fn longest_repeat(pin: &[u8]) -> usize {
    longest_run(pin, |a, b| a == b)
}

fn longest_sequence(pin: &[u8]) -> usize {
    longest_run(pin, |a, b| {
        b.is_ascii_alphanumeric() && b == a.wrapping_add(1)
    })
    .max(longest_run(pin, |a, b| {
        b.is_ascii_alphanumeric() && b == a.wrapping_sub(1)
    }))
}

impl PinApplication {
    /// Self-consistency of the rules (device limits are checked by the policy).
    pub fn validate(&self) -> ValidationResult {
        if self.min_length < 1 {
            return Err(ValidationError::new(
                "pin_min_length_invalid",
                "min_length",
                "minimum PIN length must be at least 1",
            ));
        }
        if self.min_length > self.max_length {
            return Err(ValidationError::new(
                "pin_length_range_invalid",
                "max_length",
                "maximum PIN length must not be below the minimum PIN length",
            ));
        }
        if self.max_repeated == Some(0) {
            return Err(ValidationError::new(
                "pin_max_repeated_invalid",
                "max_repeated",
                "the longest repeated run allowed must be at least 1",
            ));
        }
        if self.max_sequential == Some(0) {
            return Err(ValidationError::new(
                "pin_max_sequential_invalid",
                "max_sequential",
                "the longest sequential run allowed must be at least 1",
            ));
        }
        if self.history_count > 24 {
            return Err(ValidationError::new(
                "pin_history_invalid",
                "history_count",
                "PIN history keeps at most 24 PINs",
            ));
        }
        for (v, field) in [
            (self.pin_retry_count, "pin_retry_count"),
            (self.puk_retry_count, "puk_retry_count"),
        ] {
            if v == Some(0) {
                return Err(ValidationError::new(
                    "retry_count_invalid",
                    field,
                    "a retry count must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// Every rule with pass/fail, in a fixed order.
    pub fn check(&self, pin: &str) -> Vec<PinRuleCheck> {
        let len = pin.chars().count();
        let bytes = pin.as_bytes();
        let mut out = vec![
            PinRuleCheck {
                rule: PinRule::MinLength,
                code: PinRule::MinLength.code().into(),
                passed: len >= usize::from(self.min_length),
                description: format!("at least {} characters", self.min_length),
            },
            PinRuleCheck {
                rule: PinRule::MaxLength,
                code: PinRule::MaxLength.code().into(),
                passed: len <= usize::from(self.max_length),
                description: format!("at most {} characters", self.max_length),
            },
            PinRuleCheck {
                rule: PinRule::CharacterSet,
                code: PinRule::CharacterSet.code().into(),
                passed: pin.chars().all(|c| self.character_set.contains(c)),
                description: match self.character_set {
                    CharacterSet::Numeric => "digits only".into(),
                    CharacterSet::Alphanumeric => "letters and digits only".into(),
                    CharacterSet::Printable => "printable ASCII characters only".into(),
                },
            },
        ];
        if let Some(n) = self.max_repeated {
            out.push(PinRuleCheck {
                rule: PinRule::MaxRepeated,
                code: PinRule::MaxRepeated.code().into(),
                passed: longest_repeat(bytes) <= usize::from(n),
                description: format!("no character repeated more than {n} times in a row"),
            });
        }
        if let Some(n) = self.max_sequential {
            out.push(PinRuleCheck {
                rule: PinRule::MaxSequential,
                code: PinRule::MaxSequential.code().into(),
                passed: longest_sequence(bytes) <= usize::from(n),
                description: format!("no ascending or descending run longer than {n}"),
            });
        }
        out
    }

    /// Pass, or the first failing rule as an error on `field` (usually "pin").
    pub fn validate_pin(&self, field: &str, pin: &str) -> ValidationResult {
        match self.check(pin).into_iter().find(|c| !c.passed) {
            None => Ok(()),
            Some(c) => Err(ValidationError::new(
                c.code,
                field,
                format!("PIN must have {}", c.description),
            )),
        }
    }

    pub fn is_valid_pin(&self, pin: &str) -> bool {
        self.check(pin).iter().all(|c| c.passed)
    }

    /// A random PIN that satisfies the rules: as long as the rules and 8 allow.
    /// `next_u32` is the random source (e.g. `&mut || rng.next_u32()` with an OS RNG).
    pub fn generate(&self, next_u32: &mut dyn FnMut() -> u32) -> String {
        let len = usize::from(self.max_length.min(8).max(self.min_length));
        let alphabet = self.character_set.alphabet();
        let max_rep = self.max_repeated.map_or(usize::MAX, usize::from);
        let max_seq = self.max_sequential.map_or(usize::MAX, usize::from);
        let mut pin: Vec<u8> = Vec::with_capacity(len);
        while pin.len() < len {
            // Candidates that keep every run within bounds; with at least 10 symbols
            // and at most 3 excluded (same, +1, -1) this is never empty.
            let candidates: Vec<u8> = alphabet
                .iter()
                .copied()
                .filter(|&c| {
                    pin.push(c);
                    let ok = longest_repeat(&pin) <= max_rep && longest_sequence(&pin) <= max_seq;
                    pin.pop();
                    ok
                })
                .collect();
            pin.push(candidates[uniform(next_u32, candidates.len() as u32) as usize]);
        }
        String::from_utf8(pin).expect("alphabet is ASCII")
    }
}

/// A uniform value in 0..n by rejection sampling (no modulo bias).
fn uniform(next_u32: &mut dyn FnMut() -> u32, n: u32) -> u32 {
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let v = next_u32();
        if v < zone {
            return v % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strict() -> PinApplication {
        PinApplication {
            min_length: 6,
            max_length: 8,
            character_set: CharacterSet::Numeric,
            max_repeated: Some(2),
            max_sequential: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn each_rule_reported() {
        let p = strict();
        let failed = |pin: &str| -> Vec<String> {
            p.check(pin)
                .into_iter()
                .filter(|c| !c.passed)
                .map(|c| c.code)
                .collect()
        };
        assert!(failed("135792").is_empty());
        assert_eq!(failed("1357"), ["pin_too_short"]);
        assert_eq!(failed("135792468"), ["pin_too_long"]);
        assert_eq!(failed("13579a"), ["pin_bad_characters"]);
        assert_eq!(failed("111357"), ["pin_repeated_run"]);
        assert_eq!(failed("123457"), ["pin_sequential_run"]);
        assert_eq!(failed("987657"), ["pin_sequential_run"]);
        assert_eq!(failed("1111"), ["pin_too_short", "pin_repeated_run"]);
        let e = p.validate_pin("pin", "1234").unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_str()),
            ("pin_too_short", "pin")
        );
        assert!(!e.message.contains("1234"));
        assert_eq!(p.check("x").len(), 5);
    }

    #[test]
    fn policy_self_consistency() {
        let mut p = strict();
        p.min_length = 9;
        assert_eq!(p.validate().unwrap_err().field, "max_length");
        let mut p = strict();
        p.max_sequential = Some(0);
        assert_eq!(p.validate().unwrap_err().field, "max_sequential");
    }

    fn lcg(seed: u64) -> impl FnMut() -> u32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 32) as u32
        }
    }

    proptest! {
        #[test]
        fn generated_pins_satisfy_the_policy(
            seed in any::<u64>(),
            min in 4u8..=8,
            extra in 0u8..=4,
            cs in prop::sample::select(CharacterSet::ALL.to_vec()),
            rep in prop::option::of(1u8..=3),
            seq in prop::option::of(1u8..=4),
        ) {
            let p = PinApplication {
                min_length: min,
                max_length: min + extra,
                character_set: cs,
                max_repeated: rep,
                max_sequential: seq,
                ..Default::default()
            };
            let pin = p.generate(&mut lcg(seed));
            prop_assert!(p.is_valid_pin(&pin), "{:?}", p.check(&pin));
        }

        #[test]
        fn check_agrees_with_validate(pin in "[0-9a-z]{0,12}") {
            let p = strict();
            prop_assert_eq!(p.is_valid_pin(&pin), p.validate_pin("pin", &pin).is_ok());
        }
    }
}
