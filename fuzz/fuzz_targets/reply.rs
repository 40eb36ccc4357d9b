//! Backend bytes -> reply frames: the frame scanner and the frame inspectors
//! used to merge replies must never panic on anything a backend could send.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardgate::protocol::{reply, scan::frame_len};

fuzz_target!(|data: &[u8]| {
    let mut rest = Bytes::copy_from_slice(data);
    while let Ok(Some(n)) = frame_len(&rest) {
        assert!(n > 0 && n <= rest.len());
        let frame = rest.split_to(n);
        let _ = reply::array_elements(&frame);
        let _ = reply::integer(&frame);
        let _ = reply::bulk(&frame);
        let _ = reply::is_error(&frame);
        let _ = reply::error_text(&frame);
        // A complete frame stays complete; every strict prefix is incomplete or an error.
        assert_eq!(frame_len(&frame), Ok(Some(n)));
    }
});
