//! The status codes and messages a standard gRPC client expects, fixed on
//! the way out of the server.
//!
//! tonic answers some protocol errors with codes the gRPC spec
//! (`doc/statuscodes.md`) assigns differently: a request over the size
//! limit gets `OUT_OF_RANGE` where the spec says `RESOURCE_EXHAUSTED`, and
//! bytes that are no protobuf message get `INTERNAL` (a server bug, for a
//! client's retry logic) where the client is at fault: `INVALID_ARGUMENT`.
//! Those errors arise inside tonic's codec, before any handler runs, so the
//! only place to correct them is the HTTP response: a tower layer around
//! every service. It also caps every status message, because a message
//! echoing a client's 10 MB field once broke that client's HTTP/2 stack
//! before it could see the error.
//!
//! Where the status travels: an error returned before or instead of a
//! response (request decoding, a unary handler's `Err`, an unknown
//! method) is a trailers-only response, with `grpc-status` and
//! `grpc-message` in the response *headers*; an error in the middle of a
//! stream, and the end of every successful call, arrives in the
//! *trailers*. The layer looks in both.

use http_body_util::BodyExt;
use http_body_util::combinators::MapFrame;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, percent_encode};
use tonic::codegen::Bytes;
use tonic::codegen::http::{HeaderMap, HeaderValue, Response};
use tonic::{Code, Status};

/// Longest `grpc-message` value (as sent, percent-encoded) that leaves the
/// server; longer ones are cut and say by how much.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// What tonic's `Status::add_header` percent-encodes, besides every byte
/// outside ASCII: the same set, so that a cut message reads like any other.
const MESSAGE_ENCODING: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'?')
    .add(b'{')
    .add(b'}');

/// Room kept for the cut marker, encoded (" ... (N bytes cut)" with a
/// 20-digit N is under 50 bytes).
const MARKER_ROOM: usize = 64;

/// tonic's messages for the errors whose codes are corrected, by the code
/// tonic gives them and the code the spec asks for.
const CORRECTIONS: [(Code, &str, Code); 3] = [
    (
        Code::OutOfRange,
        "Error, decoded message length too large",
        Code::ResourceExhausted,
    ),
    (
        Code::OutOfRange,
        "Error, encoded message length too large",
        Code::ResourceExhausted,
    ),
    (
        Code::Internal,
        "failed to decode Protobuf message",
        Code::InvalidArgument,
    ),
];

type Body = tonic::body::Body;
type FixedBody = MapFrame<Body, fn(http_body::Frame<Bytes>) -> http_body::Frame<Bytes>>;

/// The layer, for `tonic::transport::Server::builder().layer(...)`.
pub type StatusLayer = tower::util::MapResponseLayer<fn(Response<Body>) -> Response<FixedBody>>;

/// A layer that corrects status codes and caps status messages in every
/// response, in its headers and its trailers.
pub fn layer() -> StatusLayer {
    tower::util::MapResponseLayer::new(fix_response as fn(Response<Body>) -> Response<FixedBody>)
}

fn fix_response(response: Response<Body>) -> Response<FixedBody> {
    let (mut parts, body) = response.into_parts();
    fix_status(&mut parts.headers);
    Response::from_parts(parts, body.map_frame(fix_frame as fn(_) -> _))
}

fn fix_frame(mut frame: http_body::Frame<Bytes>) -> http_body::Frame<Bytes> {
    if let Some(trailers) = frame.trailers_mut() {
        fix_status(trailers);
    }
    frame
}

/// Correct the code and cap the message of the status in `headers` (the
/// headers of a trailers-only response, or trailers), if there is one.
fn fix_status(headers: &mut HeaderMap) {
    let Some(code) = headers.get(Status::GRPC_STATUS).map(|v| Code::from_bytes(v.as_bytes())) else {
        return;
    };
    let Some(message) = headers.get(Status::GRPC_MESSAGE) else {
        return;
    };
    let corrected = CORRECTIONS
        .iter()
        .find(|(from, prefix, _)| *from == code && message_starts_with(message.as_bytes(), prefix))
        .map(|(_, _, to)| *to);
    let capped = cap_message(message.as_bytes(), MAX_STATUS_MESSAGE);
    if let Some(to) = corrected {
        headers.insert(Status::GRPC_STATUS, HeaderValue::from(to as i32));
    }
    if let Some(capped) = capped {
        // Percent-encoded text is visible ASCII, always a valid value.
        if let Ok(value) = HeaderValue::from_bytes(capped.as_bytes()) {
            headers.insert(Status::GRPC_MESSAGE, value);
        } else {
            headers.remove(Status::GRPC_MESSAGE);
        }
    }
}

/// Whether the percent-encoded `message` starts with `prefix`, decoding no
/// more of it than that.
fn message_starts_with(message: &[u8], prefix: &str) -> bool {
    let mut decoded = percent_decode(message);
    prefix.bytes().all(|b| decoded.next() == Some(b))
}

/// `message` (percent-encoded, as in `grpc-message`) cut to at most `cap`
/// bytes, with the cut marked; `None` when it is within `cap`.
///
/// The cut is made on the decoded text at a character boundary and the
/// result encoded again, so that it never splits an escape sequence or a
/// UTF-8 character: a client that cannot decode a message reports
/// `UNKNOWN` instead of the real code.
pub fn cap_message(message: &[u8], cap: usize) -> Option<String> {
    if message.len() <= cap {
        return None;
    }
    let decoded: Vec<u8> = percent_decode(message).collect();
    let text = String::from_utf8_lossy(&decoded);
    let budget = cap.saturating_sub(MARKER_ROOM);
    let mut used = 0;
    let mut kept = 0;
    for (at, c) in text.char_indices() {
        let encoded: usize = percent_encode(c.encode_utf8(&mut [0; 4]).as_bytes(), MESSAGE_ENCODING)
            .map(str::len)
            .sum();
        if used + encoded > budget {
            break;
        }
        used += encoded;
        kept = at + c.len_utf8();
    }
    let cut = text.len() - kept;
    let marked = format!("{} ... ({cut} bytes cut)", &text[..kept]);
    Some(percent_encode(marked.as_bytes(), MESSAGE_ENCODING).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(text: &str) -> String {
        percent_encode(text.as_bytes(), MESSAGE_ENCODING).to_string()
    }

    fn decode(value: &str) -> String {
        percent_decode(value.as_bytes())
            .decode_utf8()
            .expect("valid UTF-8")
            .into_owned()
    }

    #[test]
    fn short_messages_are_left_alone() {
        assert_eq!(cap_message(b"fine", 1024), None);
        assert_eq!(cap_message(&[b'a'; 1024], 1024), None);
    }

    #[test]
    fn long_messages_are_cut_and_say_by_how_much() {
        let message = format!("name: {} is unknown", "x".repeat(10 << 20));
        let capped = cap_message(encode(&message).as_bytes(), 1024).expect("cut");
        assert!(capped.len() <= 1024, "{}", capped.len());
        let text = decode(&capped);
        assert!(text.starts_with("name: xxx"), "{text}");
        let kept = text.find(" ... (").expect("marker");
        let cut: usize = text[kept + 6..]
            .strip_suffix(" bytes cut)")
            .expect("marker end")
            .parse()
            .expect("count");
        assert_eq!(kept + cut, message.len(), "{text}");
    }

    #[test]
    fn cuts_never_split_an_escape_or_a_character() {
        // Every cap lands somewhere different in the escapes of spaces,
        // percent signs and three- and four-byte characters.
        let message = "a €%🦀 b".repeat(400);
        let encoded = encode(&message);
        for cap in 100..400 {
            let capped = cap_message(encoded.as_bytes(), cap).expect("cut");
            assert!(capped.len() <= cap, "cap {cap}: {}", capped.len());
            let text = decode(&capped);
            let kept = text.rfind(" ... (").expect("marker");
            assert!(message.starts_with(&text[..kept]), "cap {cap}: {text}");
        }
    }

    #[test]
    fn invalid_utf8_in_a_message_still_gives_a_decodable_cut() {
        let mut encoded = "%FF%FE".repeat(1000);
        encoded.push_str("tail");
        let capped = cap_message(encoded.as_bytes(), 256).expect("cut");
        assert!(capped.len() <= 256);
        decode(&capped);
    }

    fn headers(code: Code, message: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        Status::new(code, message).add_header(&mut headers).expect("headers");
        headers
    }

    fn status(headers: &HeaderMap) -> Status {
        Status::from_header_map(headers).expect("a status")
    }

    #[test]
    fn tonic_codec_errors_get_the_codes_the_spec_gives_them() {
        for (code, message, expected) in [
            (
                Code::OutOfRange,
                "Error, decoded message length too large: found 20000000 bytes, the limit is: 16777216 bytes",
                Code::ResourceExhausted,
            ),
            (
                Code::OutOfRange,
                "Error, encoded message length too large: found 9 bytes, the limit is: 8 bytes",
                Code::ResourceExhausted,
            ),
            (
                Code::Internal,
                "failed to decode Protobuf message: invalid wire type value: 7",
                Code::InvalidArgument,
            ),
            // The same codes with other messages are the handlers' own.
            (Code::OutOfRange, "offset: past the end", Code::OutOfRange),
            (Code::Internal, "cannot store the change", Code::Internal),
            (
                Code::InvalidArgument,
                "failed to decode Protobuf message",
                Code::InvalidArgument,
            ),
        ] {
            let mut fixed = headers(code, message);
            fix_status(&mut fixed);
            let fixed = status(&fixed);
            assert_eq!(fixed.code(), expected, "{message}");
            assert_eq!(fixed.message(), message);
        }
    }

    #[test]
    fn the_layer_caps_messages_in_headers_and_trailers() {
        let long = "y".repeat(5000);
        let mut in_headers = headers(Code::NotFound, &long);
        fix_status(&mut in_headers);
        let fixed = status(&in_headers);
        assert_eq!(fixed.code(), Code::NotFound);
        assert!(fixed.message().ends_with(" bytes cut)"), "{}", fixed.message());
        assert!(in_headers[Status::GRPC_MESSAGE].len() <= MAX_STATUS_MESSAGE);

        let trailers = http_body::Frame::trailers(headers(
            Code::Internal,
            &format!("failed to decode Protobuf message: {long}"),
        ));
        let fixed = fix_frame(trailers).into_trailers().expect("trailers");
        assert_eq!(status(&fixed).code(), Code::InvalidArgument);
        assert!(fixed[Status::GRPC_MESSAGE].len() <= MAX_STATUS_MESSAGE);
    }

    #[test]
    fn responses_without_a_status_pass_untouched() {
        let mut plain = HeaderMap::new();
        plain.insert("content-type", HeaderValue::from_static("application/grpc"));
        let before = plain.clone();
        fix_status(&mut plain);
        assert_eq!(plain, before);
        let data = fix_frame(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\0")));
        assert_eq!(data.into_data().ok(), Some(Bytes::from_static(b"\0\0\0\0\0")));
    }
}
