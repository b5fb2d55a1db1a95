//! Canonical hexdump lines addressed by virtual address.
//!
//! Output follows the familiar `hexdump -C` layout (16 bytes a line, two groups of eight, an
//! ASCII column) but the left column is the address inside the dumped process, not an offset.

use std::fmt::Write;

/// Bytes per hexdump line.
pub const LINE: usize = 16;

/// Renders `bytes`, which start at virtual address `vaddr`, as hexdump lines.
pub fn render(vaddr: u64, bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() / LINE * 80 + 80);
    for (index, line) in bytes.chunks(LINE).enumerate() {
        let address = vaddr + (index * LINE) as u64;
        let _ = write!(out, "{address:016x}  ");
        for column in 0..LINE {
            match line.get(column) {
                Some(byte) => {
                    let _ = write!(out, "{byte:02x} ");
                }
                None => out.push_str("   "),
            }
            if column == LINE / 2 - 1 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(line.iter().map(|&byte| printable(byte)));
        out.push_str("|\n");
    }
    out
}

/// The byte as shown in the ASCII column: itself when printable, else a dot.
pub fn printable(byte: u8) -> char {
    if byte.is_ascii_graphic() || byte == b' ' {
        byte as char
    } else {
        '.'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_address_hex_and_ascii_columns() {
        let text = render(0x1000, b"hello, world!\n\x00\x01AB");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("0000000000001000  68 65 6c 6c 6f 2c 20 77  6f"));
        assert!(lines[0].ends_with("|hello, world!...|"));
        assert!(lines[1].starts_with("0000000000001010  41 42 "));
        assert!(lines[1].ends_with("|AB|"));
    }
}
