//! Fuzzes the agent protocol's codec: any bytes decode to frames, "need more", or an
//! error — never a panic — whether whole or fed in pieces; and every decoded frame
//! encodes back to the same bytes.
#![no_main]

use berth_wire::{decode, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest) {
        assert_eq!(frame.to_bytes(), rest[..used].to_vec(), "re-encoding gives the same bytes");
        rest = &rest[used..];
    }
    // The same bytes, fed in uneven pieces.
    let mut d = Decoder::new();
    for piece in data.chunks(7) {
        d.push(piece);
        while let Ok(Some(_)) = d.next_frame() {}
    }
});
