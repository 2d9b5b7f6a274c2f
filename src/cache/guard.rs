//! A check after the similarity score: two prompts whose numbers, named entities, negations or
//! units differ are different questions, however close their embeddings are
//! ("convert 5 miles to km" and "convert 8 miles to km" score about 0.85 with all-MiniLM-L6-v2).
//!
//! The check is lexical and English-only. Numbers include digits and number words; named entities
//! are capitalized words outside a list of common words, compared without case; negations are
//! counted (`not`, `never`, `n't`, ...); units are normalized to one name (`kilometres` is `km`).
//! Opposite words (`fastest` and `slowest`, `increase` and `decrease`) are compared too, because
//! sentence embeddings place antonyms close together.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The tokens of a prompt that the guard compares. Cache entries keep these, not the prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Salient {
    /// Numbers in order of appearance, normalized (`five` and `5.0` are `5`).
    pub numbers: Vec<String>,
    pub entities: BTreeSet<String>,
    pub negations: usize,
    pub units: BTreeSet<String>,
    /// Opposite words found, as (pair, side): `slowest` is ("speed", false).
    #[serde(default)]
    pub opposites: BTreeSet<(String, bool)>,
}

/// The kind of token that differed between two prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Numbers,
    Entities,
    Negation,
    Units,
    Opposites,
}

impl Mismatch {
    pub fn name(self) -> &'static str {
        match self {
            Mismatch::Numbers => "numbers",
            Mismatch::Entities => "entities",
            Mismatch::Negation => "negation",
            Mismatch::Units => "units",
            Mismatch::Opposites => "opposites",
        }
    }
}

/// Returns `Ok` when a cached prompt may answer a new one, or the first kind of token that differs.
pub fn check(new_prompt: &str, cached_prompt: &str) -> Result<(), Mismatch> {
    compare(&salient(new_prompt), &salient(cached_prompt))
}

/// Compares the salient tokens of two prompts.
pub fn compare(a: &Salient, b: &Salient) -> Result<(), Mismatch> {
    let mut numbers_a = a.numbers.clone();
    let mut numbers_b = b.numbers.clone();
    numbers_a.sort();
    numbers_b.sort();
    if numbers_a != numbers_b {
        return Err(Mismatch::Numbers);
    }
    if a.entities != b.entities {
        return Err(Mismatch::Entities);
    }
    if a.negations != b.negations {
        return Err(Mismatch::Negation);
    }
    if a.units != b.units {
        return Err(Mismatch::Units);
    }
    // A word on one side only is allowed ("the best way to boil an egg" is a question about boiling one);
    // a word against its opposite is not.
    let opposed = |x: &Salient, y: &Salient| {
        x.opposites.iter().any(|(pair, side)| y.opposites.contains(&(pair.clone(), !side)) && !y.opposites.contains(&(pair.clone(), *side)))
    };
    if opposed(a, b) || opposed(b, a) {
        return Err(Mismatch::Opposites);
    }
    Ok(())
}

/// Extracts the salient tokens of a prompt.
pub fn salient(text: &str) -> Salient {
    let mut found = Salient::default();
    for raw in text.split(|c: char| c.is_whitespace() || matches!(c, '"' | '(' | ')' | '[' | ']' | '{' | '}' | '?' | '!' | ';' | ':' | '/')) {
        let word = raw.trim_matches(|c: char| matches!(c, ',' | '.' | '\'' | '`' | '*' | '“' | '”' | '‘' | '’'));
        if word.is_empty() {
            continue;
        }
        let lower = word.to_lowercase().replace('’', "'");

        if is_negation(&lower) {
            found.negations += 1;
            continue;
        }
        if let Some(number) = number_value(&lower) {
            found.numbers.push(number);
            // A number glued to a unit, as in "5km" or "20°C", also names that unit.
            let suffix: String = lower.chars().skip_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',' || *c == '-').collect();
            if let Some(unit) = unit_name(&suffix) {
                found.units.insert(unit.to_string());
            }
            continue;
        }
        if let Some(unit) = unit_name(&lower) {
            found.units.insert(unit.to_string());
            continue;
        }
        if let Some((pair, side)) = opposite(&lower) {
            found.opposites.insert((pair.to_string(), side));
            continue;
        }
        if is_entity(word, &lower) {
            let stem = lower.strip_suffix("'s").unwrap_or(&lower);
            found.entities.insert(stem.to_string());
        }
    }
    found
}

fn is_negation(lower: &str) -> bool {
    const WORDS: [&str; 12] = ["not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot", "nowhere", "non"];
    WORDS.contains(&lower) || lower.ends_with("n't") || lower.ends_with("nt") && ["dont", "doesnt", "isnt", "cant", "wont", "didnt", "arent", "wasnt", "shouldnt", "couldnt", "wouldnt"].contains(&lower)
}

/// Returns the normalized value of a number token: digits (with `,` thousands separators and a
/// decimal point), a leading sign, or an English number word.
fn number_value(lower: &str) -> Option<String> {
    const WORDS: [(&str, &str); 32] = [
        ("zero", "0"), ("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"), ("five", "5"), ("six", "6"), ("seven", "7"),
        ("eight", "8"), ("nine", "9"), ("ten", "10"), ("eleven", "11"), ("twelve", "12"), ("thirteen", "13"), ("fourteen", "14"),
        ("fifteen", "15"), ("sixteen", "16"), ("seventeen", "17"), ("eighteen", "18"), ("nineteen", "19"), ("twenty", "20"),
        ("thirty", "30"), ("forty", "40"), ("fifty", "50"), ("sixty", "60"), ("seventy", "70"), ("eighty", "80"), ("ninety", "90"),
        ("hundred", "100"), ("thousand", "1000"), ("million", "1000000"), ("billion", "1000000000"),
    ];
    if let Some((_, value)) = WORDS.iter().find(|(word, _)| *word == lower) {
        return Some((*value).to_string());
    }
    let digits: String = lower.chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | '-' | '+')).filter(|c| *c != ',').collect();
    if !digits.chars().any(|c| c.is_ascii_digit()) {
        // Words with digits inside, like "gpt-4" or "v2", are compared as numbers too.
        let inner: String = lower.chars().filter(|c| c.is_ascii_digit()).collect();
        return (!inner.is_empty()).then(|| format!("{}:{inner}", lower.chars().filter(|c| c.is_alphabetic()).collect::<String>()));
    }
    match digits.trim_end_matches('.').parse::<f64>() {
        Ok(value) if value.fract() == 0.0 && value.abs() < 1e15 => Some(format!("{}", value as i64)),
        Ok(value) => Some(format!("{value}")),
        Err(_) => Some(digits),
    }
}

/// Maps a unit word or symbol to one name, or `None` when the word is not a unit.
fn unit_name(lower: &str) -> Option<&'static str> {
    const UNITS: [(&str, &[&str]); 38] = [
        ("km", &["km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"]),
        ("mi", &["mi", "mile", "miles"]),
        ("m", &["meter", "meters", "metre", "metres"]),
        ("cm", &["cm", "centimeter", "centimeters", "centimetre", "centimetres"]),
        ("mm", &["mm", "millimeter", "millimeters", "millimetre", "millimetres"]),
        ("ft", &["ft", "foot", "feet"]),
        ("in", &["inch", "inches"]),
        ("yd", &["yd", "yard", "yards"]),
        ("kg", &["kg", "kgs", "kilogram", "kilograms", "kilo", "kilos"]),
        ("g", &["gram", "grams"]),
        ("lb", &["lb", "lbs", "pound", "pounds"]),
        ("oz", &["oz", "ounce", "ounces"]),
        ("l", &["liter", "liters", "litre", "litres"]),
        ("ml", &["ml", "milliliter", "milliliters", "millilitre", "millilitres"]),
        ("gal", &["gal", "gallon", "gallons"]),
        ("cup", &["cup", "cups"]),
        ("c", &["°c", "celsius", "centigrade"]),
        ("f", &["°f", "fahrenheit"]),
        ("k", &["kelvin"]),
        ("mph", &["mph"]),
        ("kmh", &["kmh", "kph", "km/h"]),
        ("s", &["sec", "secs", "seconds"]),
        ("min", &["min", "mins", "minute", "minutes"]),
        ("h", &["hr", "hrs", "hour", "hours"]),
        ("day", &["day", "days", "daily"]),
        ("week", &["week", "weeks", "weekly"]),
        ("month", &["month", "months", "monthly"]),
        ("year", &["year", "years", "yearly", "annual", "annually"]),
        ("usd", &["usd", "dollar", "dollars", "$"]),
        ("eur", &["eur", "euro", "euros", "€"]),
        ("gbp", &["gbp", "£", "sterling"]),
        ("jpy", &["jpy", "yen", "¥"]),
        ("byte", &["byte", "bytes"]),
        ("kb", &["kb", "kilobyte", "kilobytes"]),
        ("mb", &["mb", "megabyte", "megabytes"]),
        ("gb", &["gb", "gigabyte", "gigabytes"]),
        ("tb", &["tb", "terabyte", "terabytes"]),
        ("%", &["%", "percent", "percentage"]),
    ];
    if lower.is_empty() {
        return None;
    }
    UNITS.iter().find(|(_, words)| words.contains(&lower)).map(|(name, _)| *name)
}

/// Returns the pair and side of a word that has an opposite: (`speed`, true) for `fastest`.
fn opposite(lower: &str) -> Option<(&'static str, bool)> {
    const PAIRS: [(&str, &[&str], &[&str]); 23] = [
        ("speed", &["fast", "faster", "fastest", "quick", "quicker", "quickest"], &["slow", "slower", "slowest"]),
        ("size", &["big", "bigger", "biggest", "large", "larger", "largest"], &["small", "smaller", "smallest", "little"]),
        ("height", &["high", "higher", "highest", "tall", "taller", "tallest"], &["low", "lower", "lowest", "short", "shorter", "shortest"]),
        ("quality", &["good", "better", "best"], &["bad", "worse", "worst"]),
        ("amount", &["more", "most", "maximum", "max"], &["less", "least", "fewer", "fewest", "minimum", "min"]),
        ("change", &["increase", "increases", "raise", "raising", "increasing"], &["decrease", "decreases", "reduce", "reducing", "decreasing"]),
        ("plan", &["upgrade", "upgrading"], &["downgrade", "downgrading"]),
        ("switch", &["enable", "enabling", "activate"], &["disable", "disabling", "deactivate"]),
        ("membership", &["add", "adding", "include", "including"], &["remove", "removing", "exclude", "excluding", "delete", "deleting"]),
        ("trade", &["buy", "buying", "purchase"], &["sell", "selling"]),
        ("time", &["before", "earlier", "earliest", "first"], &["after", "later", "latest", "last"]),
        ("temperature", &["hot", "hotter", "hottest", "warm", "warmer", "warmest"], &["cold", "colder", "coldest", "cool", "cooler", "coolest"]),
        ("state", &["open", "opening", "start", "starting"], &["close", "closing", "stop", "stopping"]),
        ("flow", &["import", "importing", "upload", "uploading", "input"], &["export", "exporting", "download", "downloading", "output"]),
        ("outcome", &["win", "winning", "won", "pass", "passes", "passed"], &["lose", "losing", "lost", "fail", "fails", "failed"]),
        ("direction", &["rise", "rising", "above"], &["fall", "falling", "below"]),
        ("truth", &["true", "correct"], &["false", "incorrect", "wrong"]),
        ("sign", &["positive", "pros", "advantages", "benefits"], &["negative", "cons", "disadvantages", "drawbacks"]),
        ("age", &["old", "older", "oldest"], &["new", "newer", "newest", "young", "younger", "youngest"]),
        ("price", &["expensive", "pricier", "priciest"], &["cheap", "cheaper", "cheapest"]),
        ("depth", &["deep", "deeper", "deepest"], &["shallow", "shallower", "shallowest"]),
        ("permission", &["allow", "allowed", "accept", "accepted", "legal"], &["deny", "denied", "reject", "rejected", "illegal"]),
        ("lock", &["lock", "locking", "encrypt", "encrypting"], &["unlock", "unlocking", "decrypt", "decrypting"]),
    ];
    PAIRS.iter().find_map(|(pair, first, second)| {
        if first.contains(&lower) {
            Some((*pair, true))
        } else if second.contains(&lower) {
            Some((*pair, false))
        } else {
            None
        }
    })
}

/// Returns whether a word is a named entity: capitalized (or an acronym) and not a common English word.
fn is_entity(word: &str, lower: &str) -> bool {
    let first_upper = word.chars().next().is_some_and(char::is_uppercase);
    if !first_upper {
        return false;
    }
    let stem = lower.strip_suffix("'s").unwrap_or(lower);
    !COMMON_WORDS.contains(&stem) && stem.chars().any(char::is_alphabetic)
}

/// Words that start sentences or are capitalized for emphasis without naming anything.
const COMMON_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "before", "best", "between",
    "both", "but", "by", "calculate", "can", "check", "compare", "convert", "could", "define", "describe", "did", "do", "does",
    "each", "either", "even", "every", "explain", "find", "for", "from", "generate", "get", "give", "good", "had", "has", "have",
    "he", "hello", "help", "her", "hey", "hi", "his", "how", "i", "i'd", "i'll", "i'm", "i've", "if", "in", "is", "it", "it's", "its",
    "just", "kindly", "let", "let's", "list", "make", "many", "may", "me", "might", "much", "must", "my", "name", "of", "ok", "okay",
    "on", "or", "our", "please", "quick", "quickly", "recommend", "say", "she", "should", "show", "since", "so", "some", "suggest",
    "summarize", "summarise", "tell", "thanks", "that", "that's", "the", "their", "them", "then", "there", "there's", "these", "they",
    "this", "those", "to", "translate", "under", "usually", "was", "we", "were", "what", "what's", "whats", "when", "where",
    "where's", "which", "while", "who", "who's", "whom", "whose", "why", "will", "with", "would", "write", "yes", "you", "your",
    "is", "are", "roughly", "approximately", "exactly", "briefly", "simply", "now", "today", "here", "q", "question", "answer",
    "into", "whats", "howto", "using", "use", "need", "want", "looking", "trying", "instead", "other", "another", "same",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_numbers_rejected() {
        assert_eq!(check("Convert 5 miles to kilometers", "Convert 8 miles to kilometers"), Err(Mismatch::Numbers));
        assert_eq!(check("What is five plus three?", "What is 5 plus 3?"), Ok(()));
        assert_eq!(check("Is 1,000 a lot?", "Is 1000 a lot?"), Ok(()));
    }

    #[test]
    fn different_entities_rejected() {
        assert_eq!(check("What is the capital of Austria?", "What is the capital of Australia?"), Err(Mismatch::Entities));
        assert_eq!(check("What's France's capital?", "Tell me the capital of France"), Ok(()));
    }

    #[test]
    fn negation_rejected() {
        assert_eq!(check("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"), Err(Mismatch::Negation));
        assert_eq!(check("Why doesn't my build work?", "Why does my build not work?"), Ok(()));
    }

    #[test]
    fn different_units_rejected() {
        assert_eq!(check("Convert 5 miles to km", "Convert 5 miles to meters"), Err(Mismatch::Units));
        assert_eq!(check("Convert 5 kilometres to miles", "How many miles is 5 km?"), Ok(()));
        assert_eq!(check("Is 30°C hot?", "Is 30 celsius hot?"), Ok(()));
    }

    #[test]
    fn paraphrase_accepted() {
        assert_eq!(check("How do I reset my password?", "How can I change my password if I forgot it?"), Ok(()));
    }

    #[test]
    fn opposites_rejected() {
        assert_eq!(check("What is the fastest land animal?", "What is the slowest land animal?"), Err(Mismatch::Opposites));
        assert_eq!(check("How do I increase my credit limit?", "How do I decrease my credit limit?"), Err(Mismatch::Opposites));
        assert_eq!(check("Which ocean is the biggest?", "What is the largest ocean?"), Ok(()));
    }

    #[test]
    fn versions_compared_as_numbers() {
        assert_eq!(check("Explain Python 3 features", "Explain Python 2 features"), Err(Mismatch::Numbers));
        assert_eq!(check("What is new in gpt-4?", "What is new in gpt-5?"), Err(Mismatch::Numbers));
    }
}
