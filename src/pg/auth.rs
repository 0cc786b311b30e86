//! libpq's `require_auth`: which authentication methods the server may ask for. A stream
//! wrapper reads the server's authentication request before tokio-postgres answers it, so a
//! server that asks for a method the rule forbids (a cleartext password, say) gets nothing:
//! the connection fails with a message naming the method.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An authentication method, as `require_auth` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Password,
    Md5,
    Gss,
    Sspi,
    ScramSha256,
    None,
}

const METHODS: [(Method, &str); 6] = [
    (Method::Password, "password"),
    (Method::Md5, "md5"),
    (Method::Gss, "gss"),
    (Method::Sspi, "sspi"),
    (Method::ScramSha256, "scram-sha-256"),
    (Method::None, "none"),
];

impl Method {
    fn bit(self) -> u8 {
        1 << METHODS
            .iter()
            .position(|(m, _)| *m == self)
            .expect("listed")
    }

    pub fn name(self) -> &'static str {
        METHODS.iter().find(|(m, _)| *m == self).expect("listed").1
    }
}

/// The methods allowed (a bit per [`Method`]); `None` in [`super::Target`] allows all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequireAuth {
    allowed: u8,
    text_negated: bool,
}

impl RequireAuth {
    /// `scram-sha-256,none` (these only) or `!password,!md5` (all but these), as libpq.
    pub fn parse(s: &str) -> Result<RequireAuth, String> {
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        let negated = items.first().is_some_and(|i| i.starts_with('!'));
        let mut bits = 0u8;
        for item in &items {
            if item.starts_with('!') != negated {
                return Err(format!(
                    "\"{s}\": negative and positive methods cannot be mixed"
                ));
            }
            let name = item.trim_start_matches('!');
            let method = METHODS
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(m, _)| *m)
                .ok_or_else(|| {
                    format!(
                        "\"{name}\" is not an authentication method (password, md5, gss, sspi, scram-sha-256, none; prefix ! to forbid)"
                    )
                })?;
            bits |= method.bit();
        }
        let all = METHODS.iter().fold(0, |b, (m, _)| b | m.bit());
        Ok(RequireAuth {
            allowed: if negated { all & !bits } else { bits },
            text_negated: negated,
        })
    }

    pub fn allows(self, m: Method) -> bool {
        self.allowed & m.bit() != 0
    }

    /// The rule as libpq writes it.
    pub fn describe(self) -> String {
        METHODS
            .iter()
            .filter(|(m, _)| self.allows(*m) != self.text_negated)
            .map(|(_, n)| {
                if self.text_negated {
                    format!("!{n}")
                } else {
                    n.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Does a password go out in cleartext (or as an md5 hash anyone can replay) under this rule?
    pub fn allows_weak_password(self) -> bool {
        self.allows(Method::Password) || self.allows(Method::Md5)
    }
}

/// What the stream has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing written yet: the first frontend message tells what follows.
    Start,
    /// An SSLRequest went out: the next byte read is the server's 'S' or 'N'.
    SslReply,
    /// Backend messages in the clear: watching for authentication requests.
    Messages,
    /// Encrypted bytes follow, or authentication is over: pass everything through.
    Off,
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A stream that enforces a [`RequireAuth`] on the backend messages read through it.
pub struct Watched<S> {
    inner: S,
    rule: Option<RequireAuth>,
    phase: Phase,
    /// The first bytes written, to recognise the first frontend message.
    first_write: Vec<u8>,
    /// A partial message header (type, length, auth code) being read.
    header: Vec<u8>,
    /// Body bytes of the current message still to skip.
    skip: usize,
    /// Whether the server asked for any authentication.
    asked: bool,
}

impl<S> Watched<S> {
    pub fn new(inner: S, rule: Option<RequireAuth>) -> Watched<S> {
        Watched {
            inner,
            phase: if rule.is_some() {
                Phase::Start
            } else {
                Phase::Off
            },
            rule,
            first_write: Vec::new(),
            header: Vec::with_capacity(9),
            skip: 0,
            asked: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn refuse(&self, rule: RequireAuth, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "authentication refused by require_auth={}: {what}; nothing was sent to the server",
                rule.describe()
            ),
        )
    }

    /// The auth request code of a complete 'R' header: allowed or not.
    fn judge(&mut self, code: u32) -> io::Result<()> {
        let rule = self.rule.expect("watching only with a rule");
        let method = match code {
            0 => {
                self.phase = Phase::Off;
                if !self.asked && !rule.allows(Method::None) {
                    return Err(self.refuse(rule, "the server did not ask for any authentication"));
                }
                return Ok(());
            }
            3 => Method::Password,
            5 => Method::Md5,
            7 | 8 => Method::Gss,
            9 => Method::Sspi,
            10 => Method::ScramSha256,
            // SASL continue/final and anything else belong to a method already judged.
            _ => return Ok(()),
        };
        self.asked = true;
        if rule.allows(method) {
            Ok(())
        } else {
            Err(self.refuse(
                rule,
                &format!("the server asked for {} authentication", method.name()),
            ))
        }
    }

    /// Walk the backend bytes just read.
    fn inspect(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Off | Phase::Start => return Ok(()),
                Phase::SslReply => {
                    self.phase = if bytes[0] == b'N' {
                        Phase::Messages
                    } else {
                        Phase::Off
                    };
                    bytes = &bytes[1..];
                }
                Phase::Messages if self.skip > 0 => {
                    let n = self.skip.min(bytes.len());
                    self.skip -= n;
                    bytes = &bytes[n..];
                }
                Phase::Messages => {
                    // Type (1) + length (4), and for 'R' the code (4).
                    let want = if self.header.first() == Some(&b'R') {
                        9
                    } else {
                        5
                    };
                    let n = (want - self.header.len()).min(bytes.len());
                    self.header.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.header.len() < want {
                        continue;
                    }
                    if self.header[0] == b'R' && self.header.len() == 5 {
                        continue; // read the code too
                    }
                    let len =
                        u32::from_be_bytes(self.header[1..5].try_into().expect("4 bytes")) as usize;
                    let read_of_body = self.header.len() - 5;
                    self.skip = len.saturating_sub(4 + read_of_body);
                    if self.header[0] == b'R' {
                        let code =
                            u32::from_be_bytes(self.header[5..9].try_into().expect("4 bytes"));
                        self.header.clear();
                        self.judge(code)?;
                    } else {
                        self.header.clear();
                    }
                }
            }
        }
        Ok(())
    }

    fn saw_written(&mut self, buf: &[u8]) {
        if self.phase != Phase::Start {
            return;
        }
        let n = (8 - self.first_write.len()).min(buf.len());
        self.first_write.extend_from_slice(&buf[..n]);
        if self.first_write.len() < 8 {
            return;
        }
        self.phase = if self.first_write == SSL_REQUEST {
            Phase::SslReply
        } else if self.first_write[4..8] == [0, 3, 0, 0] {
            Phase::Messages // a startup message (protocol 3.0): plaintext
        } else {
            Phase::Off // a TLS ClientHello (direct negotiation): the TLS layer watches
        };
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && self.phase != Phase::Off
        {
            let new = buf.filled()[before..].to_vec();
            if let Err(e) = self.inspect(&new) {
                buf.set_filled(before);
                return Poll::Ready(Err(e));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.saw_written(&buf[..n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for Watched<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.inner.channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_as_libpq() {
        let r = RequireAuth::parse("scram-sha-256").unwrap();
        assert!(r.allows(Method::ScramSha256));
        assert!(!r.allows(Method::Password) && !r.allows(Method::None));
        assert!(!r.allows_weak_password());
        let r = RequireAuth::parse("!password,!md5").unwrap();
        assert!(r.allows(Method::ScramSha256) && r.allows(Method::None));
        assert!(!r.allows_weak_password());
        assert_eq!(r.describe(), "!password,!md5");
        assert!(RequireAuth::parse("scram-sha-256,!md5").is_err());
        assert!(RequireAuth::parse("kerberos").is_err());
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn watched(rule: &str) -> Watched<()> {
        let mut w = Watched::new((), Some(RequireAuth::parse(rule).unwrap()));
        let mut startup = vec![0, 0, 0, 9, 0, 3, 0, 0, 0];
        startup[3] = 9;
        w.saw_written(&startup);
        w
    }

    #[test]
    fn a_forbidden_request_is_refused_even_split_across_reads() {
        let mut w = watched("scram-sha-256");
        let bytes = message(b'R', &3u32.to_be_bytes());
        // One byte at a time: the header is assembled across reads.
        let mut result = Ok(());
        for b in &bytes {
            result = w.inspect(std::slice::from_ref(b));
            if result.is_err() {
                break;
            }
        }
        let e = result.unwrap_err().to_string();
        assert!(e.contains("asked for password authentication"), "{e}");
    }

    #[test]
    fn an_allowed_exchange_passes_and_stops_watching() {
        let mut w = watched("scram-sha-256");
        let mut bytes = message(
            b'R',
            &[&10u32.to_be_bytes()[..], b"SCRAM-SHA-256\0\0"].concat(),
        );
        bytes.extend(message(b'R', &11u32.to_be_bytes()));
        bytes.extend(message(b'R', &0u32.to_be_bytes()));
        bytes.extend(message(b'S', b"application_name\0x\0"));
        w.inspect(&bytes).unwrap();
        assert_eq!(w.phase, Phase::Off);
    }

    #[test]
    fn trust_is_refused_unless_none_is_allowed() {
        let mut w = watched("scram-sha-256");
        let e = w
            .inspect(&message(b'R', &0u32.to_be_bytes()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not ask for any authentication"), "{e}");
        let mut w = watched("scram-sha-256,none");
        w.inspect(&message(b'R', &0u32.to_be_bytes())).unwrap();
    }

    #[test]
    fn after_an_ssl_request_only_n_keeps_watching() {
        let mut w = Watched::new((), Some(RequireAuth::parse("scram-sha-256").unwrap()));
        w.saw_written(&SSL_REQUEST);
        assert_eq!(w.phase, Phase::SslReply);
        w.inspect(b"S\x16\x03\x03").unwrap();
        assert_eq!(w.phase, Phase::Off, "TLS bytes follow 'S'");
        let mut w = Watched::new((), Some(RequireAuth::parse("scram-sha-256").unwrap()));
        w.saw_written(&SSL_REQUEST);
        let mut bytes = b"N".to_vec();
        bytes.extend(message(b'R', &5u32.to_be_bytes()));
        assert!(w.inspect(&bytes).is_err(), "md5 after 'N' is judged");
    }
}
