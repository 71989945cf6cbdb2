//! One error type for the whole data path, and the one table from error kind to OCI error
//! code and HTTP status (distribution-spec "Error Codes"; statuses as the reference registry
//! answers them).

use std::fmt;

/// Which side of the cache failed: decides logging and, with the kind, the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Store,
    Internal,
}

/// What went wrong, in the terms a client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NameInvalid,
    NameUnknown,
    TagInvalid,
    DigestInvalid,
    ManifestUnknown,
    ManifestInvalid,
    BlobUnknown,
    Unsupported,
    Unauthorized,
    Denied,
    TooManyRequests,
    /// Upstream unreachable, or answered 5xx; or we are out of a resource.
    Unavailable,
    /// The request head was malformed or broke the framing rules.
    BadRequest,
    /// The request head was over a size limit.
    HeadTooLarge,
    /// The request line (in practice its target) was over its limit (RFC 9110 §15.5.15).
    UriTooLong,
    RangeNotSatisfiable,
    /// Upstream answered something we cannot use (bad framing, digest mismatch, too large).
    BadGateway,
    /// The request has been through this ringcache before (its `Via`): a loop of proxies.
    LoopDetected,
    Internal,
}

impl Kind {
    /// The OCI error code and HTTP status for this kind.
    pub fn code_status(self) -> (&'static str, u16) {
        match self {
            Kind::NameInvalid => ("NAME_INVALID", 400),
            Kind::NameUnknown => ("NAME_UNKNOWN", 404),
            Kind::TagInvalid => ("TAG_INVALID", 400),
            Kind::DigestInvalid => ("DIGEST_INVALID", 400),
            Kind::ManifestUnknown => ("MANIFEST_UNKNOWN", 404),
            Kind::ManifestInvalid => ("MANIFEST_INVALID", 400),
            Kind::BlobUnknown => ("BLOB_UNKNOWN", 404),
            Kind::Unsupported => ("UNSUPPORTED", 405),
            Kind::Unauthorized => ("UNAUTHORIZED", 401),
            Kind::Denied => ("DENIED", 403),
            Kind::TooManyRequests => ("TOOMANYREQUESTS", 429),
            Kind::Unavailable => ("UNAVAILABLE", 503),
            Kind::BadRequest => ("BAD_REQUEST", 400),
            Kind::HeadTooLarge => ("BAD_REQUEST", 431),
            Kind::UriTooLong => ("BAD_REQUEST", 414),
            Kind::RangeNotSatisfiable => ("RANGE_INVALID", 416),
            Kind::BadGateway => ("UNAVAILABLE", 502),
            Kind::LoopDetected => ("UNAVAILABLE", 508),
            Kind::Internal => ("UNKNOWN", 500),
        }
    }

    pub fn status(self) -> u16 {
        self.code_status().1
    }
}

/// An error on the data path: what kind, which side, where (a short static context added at
/// the call site) and the underlying cause, if any.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub side: Side,
    pub context: &'static str,
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, side: Side, context: &'static str) -> Error {
        Error {
            kind,
            side,
            context,
            cause: None,
        }
    }

    pub fn client(kind: Kind, context: &'static str) -> Error {
        Error::new(kind, Side::Client, context)
    }

    pub fn upstream(kind: Kind, context: &'static str) -> Error {
        Error::new(kind, Side::Upstream, context)
    }

    pub fn with_cause(
        mut self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The OCI error JSON body for this error.
    pub fn body(&self) -> String {
        let (code, _) = self.kind.code_status();
        let message = match self.kind {
            Kind::NameInvalid => "invalid repository name",
            Kind::NameUnknown => "repository name not known to registry",
            Kind::TagInvalid => "manifest tag did not match URI",
            Kind::DigestInvalid => "provided digest did not match uploaded content",
            Kind::ManifestUnknown => "manifest unknown",
            Kind::ManifestInvalid => "manifest invalid",
            Kind::BlobUnknown => "blob unknown to registry",
            Kind::Unsupported => "The operation is unsupported.",
            Kind::Unauthorized => "authentication required",
            Kind::Denied => "requested access to the resource is denied",
            Kind::TooManyRequests => "too many requests",
            Kind::Unavailable => "service unavailable",
            Kind::BadRequest => "bad request",
            Kind::HeadTooLarge => "request header fields too large",
            Kind::UriTooLong => "request URI too long",
            Kind::RangeNotSatisfiable => "requested range not satisfiable",
            Kind::BadGateway => "bad response from upstream",
            Kind::LoopDetected => "request loop detected",
            Kind::Internal => "unknown error",
        };
        let detail = serde_json::Value::String(self.context.to_string());
        format!(r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":{detail}}}]}}"#)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} error ({:?}): {}",
            self.side, self.kind, self.context
        )?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// Attach a kind, side and context to an `io::Result` or any other fallible value.
pub trait OrErr<T> {
    fn or_err(self, kind: Kind, side: Side, context: &'static str) -> Result<T>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> OrErr<T> for std::result::Result<T, E> {
    fn or_err(self, kind: Kind, side: Side, context: &'static str) -> Result<T> {
        self.map_err(|e| Error::new(kind, side, context).with_cause(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_oci_error_json() {
        let e = Error::client(Kind::BlobUnknown, "no such \"blob\"");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["detail"], "no such \"blob\"");
        assert_eq!(e.kind.status(), 404);
    }

    #[test]
    fn statuses() {
        for (kind, status) in [
            (Kind::Unsupported, 405),
            (Kind::TooManyRequests, 429),
            (Kind::Unavailable, 503),
            (Kind::HeadTooLarge, 431),
            (Kind::UriTooLong, 414),
            (Kind::NameInvalid, 400),
            (Kind::ManifestUnknown, 404),
            (Kind::LoopDetected, 508),
        ] {
            assert_eq!(kind.status(), status, "{kind:?}");
        }
    }
}
