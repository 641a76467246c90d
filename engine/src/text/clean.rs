//! diffusers' `prompt_clean` for Wan (`pipeline_wan.py`): `basic_clean` (ftfy when installed, then
//! `html.unescape` twice, strip) followed by `whitespace_clean` (every run of whitespace becomes one
//! space, strip).
//!
//! ftfy is an optional dependency of diffusers and has no Rust port; like a diffusers install
//! without it (the golden reference's setup), Tessera does not apply it. `html_unescape` is
//! Python's `html.unescape`, rule for rule, over the HTML5 entity table.

/// The text the tokenizer sees for a user prompt.
pub fn prompt_clean(text: &str) -> String {
    let once = html_unescape(text);
    let twice = html_unescape(&once);
    whitespace_clean(twice.trim_matches(is_py_space))
}

/// `re.sub(r"\s+", " ", text).strip()` with Python's notion of whitespace.
pub fn whitespace_clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if is_py_space(c) {
            in_space = true;
        } else {
            if in_space && !out.is_empty() {
                out.push(' ');
            }
            in_space = false;
            out.push(c);
        }
    }
    out
}

/// Python's `str.isspace` (also what `\s` and `strip()` use): Unicode White_Space plus the
/// information separators U+001C–U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `html.unescape`: named references (longest known prefix when the `;` is missing),
/// decimal and hex numeric references with the HTML5 replacements for invalid code points.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match charref(after) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Matches `#[0-9]+;?`, `#[xX][0-9a-fA-F]+;?` or `[^\t\n\f <&#;]{1,32};?` at the start of `s` (the
/// text after `&`) and returns the replacement and the bytes consumed.
fn charref(s: &str) -> Option<(String, usize)> {
    if let Some(num) = s.strip_prefix('#') {
        let (digits, radix, prefix) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex.bytes().take_while(u8::is_ascii_hexdigit).count(), 16, 2),
            None => (num.bytes().take_while(u8::is_ascii_digit).count(), 10, 1),
        };
        if digits == 0 {
            return None;
        }
        let body = &s[prefix..prefix + digits];
        let semi = usize::from(s[prefix + digits..].starts_with(';'));
        // Overlong numbers saturate: anything above U+10FFFF becomes U+FFFD like in Python.
        let value = u32::from_str_radix(body, radix).unwrap_or(u32::MAX);
        return Some((numeric_replacement(value), prefix + digits + semi));
    }
    let name_len: usize = s
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let semi = usize::from(s[name_len..].starts_with(';'));
    let whole = &s[..name_len + semi];
    if let Some(v) = entity(whole) {
        return Some((v, whole.len()));
    }
    // Longest prefix (at least two characters) that is a known entity; the rest stays text.
    let boundaries: Vec<usize> = whole.char_indices().map(|(i, _)| i).skip(2).collect();
    for &end in boundaries.iter().rev() {
        if let Some(v) = entity(&whole[..end]) {
            return Some((v + &whole[end..], whole.len()));
        }
    }
    None
}

fn entity(name: &str) -> Option<String> {
    let key = format!("&{name}");
    htmlize::ENTITIES.get(key.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Windows-1252 meanings of C1 code points, which HTML5 substitutes for `&#128;`…`&#159;`
/// (the five undefined ones map to themselves), as Python's `_invalid_charrefs`.
const CP1252_C1: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{2c6}', '\u{2030}',
    '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}',
    '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}',
    '\u{17e}', '\u{178}',
];

fn numeric_replacement(n: u32) -> String {
    match n {
        0 => '\u{fffd}'.to_string(),
        0x0d => '\r'.to_string(),
        0x80..=0x9f => CP1252_C1[(n - 0x80) as usize].to_string(),
        0xd800..=0xdfff | 0x11_0000.. => '\u{fffd}'.to_string(),
        // Python drops control characters and non-characters entirely.
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        n if n & 0xfffe == 0xfffe => String::new(),
        n => char::from_u32(n).map(String::from).unwrap_or_else(|| '\u{fffd}'.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_html_unescape() {
        // Expected values from CPython 3.11 `html.unescape`.
        let cases = [
            ("Two cats &amp; bright gloves", "Two cats & bright gloves"),
            ("&amp;amp;", "&amp;"),
            ("&lt;b&gt; &quot;x&quot; &#39;y&#39;", "<b> \"x\" 'y'"),
            ("&ampfoo &notit; &notin;", "&foo ¬it; ∉"),
            ("&#x41;&#X42;&#67 &#128; &#0; &#1;x &#xD800; &#99999999999;", "ABC € \u{fffd} x \u{fffd} \u{fffd}"),
            ("&nosuch; & &; &#; &#x;", "&nosuch; & &; &#; &#x;"),
            ("caf&eacute; na&iuml;ve &copy 2024", "café naïve © 2024"),
        ];
        for (input, want) in cases {
            assert_eq!(html_unescape(input), want, "input {input:?}");
        }
    }

    #[test]
    fn cleans_like_diffusers() {
        // diffusers.pipelines.wan.pipeline_wan.prompt_clean (ftfy not installed).
        assert_eq!(
            prompt_clean("  Two cats &amp; bright gloves   fight on a stage  "),
            "Two cats & bright gloves fight on a stage"
        );
        // Unescaped twice: `&amp;lt;` → `&lt;` → `<`.
        assert_eq!(prompt_clean("a &amp;lt; b"), "a < b");
        assert_eq!(prompt_clean("line\n\tbreak\u{3000}and\u{a0}nbsp\u{1f}"), "line break and nbsp");
        assert_eq!(prompt_clean(""), "");
        assert_eq!(prompt_clean(" \n "), "");
    }
}
